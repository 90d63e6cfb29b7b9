#!/bin/sh
# Prints the message shipped with the package; exits with the code it is given.
cat data/message.txt
echo "greeting ${GREETING:-none}"
exit "${1:-0}"
