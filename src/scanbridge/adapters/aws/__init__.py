"""AWS adapters (boto3): DynamoDB, S3, KMS, Batch."""
