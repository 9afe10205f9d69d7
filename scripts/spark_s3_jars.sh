#!/usr/bin/env bash
# S3A for the spark engine's S3 tests: hadoop-aws and the AWS SDK bundle, into DEST (default .venv/spark-s3-jars).
# A user adds them as Spark always does (--packages org.apache.hadoop:hadoop-aws:VERSION, from Maven Central).
# Maven Central is out of reach here, so the tests take the two jars that the PyPI sdist of sagemaker_pyspark
# 1.4.5 bundles: hadoop-aws 3.3.1 and aws-java-sdk-bundle 1.11.901 (they run on pyspark 4's Hadoop 3.5 client
# once four S3A durations are given as plain numbers: tests/batch/test_clusters.py does).
set -euo pipefail
dest=${1:-.venv/spark-s3-jars}
[ -f "$dest/hadoop-aws-3.3.1.jar" ] && [ -f "$dest/aws-java-sdk-bundle-1.11.901.jar" ] && exit 0
python=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" \
    sagemaker_pyspark==1.4.5
mkdir -p "$dest"
tar -xzf "$tmp"/sagemaker_pyspark-1.4.5.tar.gz -C "$tmp" \
    sagemaker_pyspark-1.4.5/deps/jars/hadoop-aws-3.3.1.jar sagemaker_pyspark-1.4.5/deps/jars/aws-java-sdk-bundle-1.11.901.jar
(cd "$tmp"/sagemaker_pyspark-1.4.5/deps/jars && sha256sum --quiet -c - <<'SUMS'
6be50ad8a8b445d2802381b085b2a3ede5c29d353450a6a21f16b2fefa962b6e  hadoop-aws-3.3.1.jar
b87175b32a16544cc1b37cf40390eb375833e62bed67f8ce6cde4b7ad6429ead  aws-java-sdk-bundle-1.11.901.jar
SUMS
)
mv "$tmp"/sagemaker_pyspark-1.4.5/deps/jars/*.jar "$dest"/
