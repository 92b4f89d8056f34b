"""Prepares a moto S3 server for the S3 source tests.

    s3_fixture.py setup ENDPOINT BUCKET PREFIX DIR
        Creates an IAM user allowed s3:* with an access key, the bucket, and
        uploads every file under DIR to PREFIX/<relative path>; then turns
        moto's authentication on, so only that key (correctly signed) works.
        Prints {"key": ..., "secret": ...}.
    s3_fixture.py put ENDPOINT KEY SECRET BUCKET OBJECT_KEY FILE
        Uploads one file with that key.
"""
import json
import os
import sys
import urllib.request

import boto3

REGION = "us-east-1"


def client(service, endpoint, key="setup", secret="setup"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def setup(endpoint, bucket, prefix, directory):
    iam = client("iam", endpoint)
    iam.create_user(UserName="tagger")
    iam.put_user_policy(
        UserName="tagger",
        PolicyName="s3-all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="tagger")["AccessKey"]
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket=bucket)
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            s3.upload_file(path, bucket, f"{prefix}/{relative}")
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request).read()
    print(json.dumps({"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))


def put(endpoint, key, secret, bucket, object_key, path):
    client("s3", endpoint, key, secret).upload_file(path, bucket, object_key)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"setup": setup, "put": put}[command](*args)
