#!/bin/sh
# Sample installer: copies the payload where the tests can see it.
set -e
echo "installing in mode ${SAMPLE_MODE:-unset}"
cp payload/readme.txt "${SAMPLE_TARGET:-/tmp}/sampletool-readme.txt"
