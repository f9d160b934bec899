"""Services: intake, processing, delivery and queries. Plain values and ports in, domain values out."""
