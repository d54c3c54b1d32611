"""Uploads one file with the AWS Common Runtime's S3 client (awscrt), the engine behind the
AWS CLI v2's and the SDKs' fastest transfer paths: `cargo bench --bench s3` runs it as a peer.

usage: s3_crt.py ENDPOINT_HOST:PORT BUCKET KEY FILE PART_SIZE THROUGHPUT_GBPS
Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; plain HTTP.
"""

import os
import sys

from awscrt import auth, http, io, s3


def main():
    host, bucket, key, path, part_size, gbps = sys.argv[1:7]
    size = os.path.getsize(path)
    event_loops = io.EventLoopGroup()
    resolver = io.DefaultHostResolver(event_loops)
    bootstrap = io.ClientBootstrap(event_loops, resolver)
    credentials = auth.AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    client = s3.S3Client(
        bootstrap=bootstrap,
        region="us-east-1",
        credential_provider=credentials,
        tls_mode=s3.S3RequestTlsMode.DISABLED,
        part_size=int(part_size),
        throughput_target_gbps=float(gbps),
    )
    headers = http.HttpHeaders(
        [
            ("Host", host),
            ("Content-Length", str(size)),
            ("Content-Type", "application/octet-stream"),
        ]
    )
    request = http.HttpRequest("PUT", f"/{bucket}/{key}", headers)
    done = client.make_request(
        type=s3.S3RequestType.PUT_OBJECT, request=request, send_filepath=path
    )
    done.finished_future.result()


if __name__ == "__main__":
    main()
