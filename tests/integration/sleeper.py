"""A stand-in worker for tests: sleeps (ignores its arguments)."""

import time

if __name__ == "__main__":
    time.sleep(60)
