#!/usr/bin/env python3
"""A local S3 endpoint for development: moto's server on loopback, with a bucket, until Ctrl-C.

python infra/local_s3.py --port 9000 --bucket deblur-artifacts
# then, in another shell, paste the printed exports and use s3://deblur-artifacts/... anywhere
"""

from __future__ import annotations

import argparse
import logging
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bucket", default="deblur-artifacts")
    args = p.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{args.port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=args.bucket)
    print(f"S3 endpoint on {endpoint} with bucket s3://{args.bucket} (in memory; gone when this stops)")
    print(
        f"export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        "AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
