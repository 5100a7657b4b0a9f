#!/bin/sh
# `/` of MODE=schema: the app reads its database's schema number from a file on a volume
# ($SCHEMA_FILE, /data/schema) and answers its version only when it can read that schema
# (APP_SCHEMA, "MIN-MAX", the range its image's turnout.schema label declares); otherwise 500.
s=$(cat "${SCHEMA_FILE:-/data/schema}" 2>/dev/null)
low=${APP_SCHEMA%-*} high=${APP_SCHEMA#*-}
case "$s" in
  ''|*[!0-9]*) ok= ;;
  *) ok=1; { [ "$s" -lt "$low" ] || [ "$s" -gt "$high" ]; } && ok= ;;
esac
if [ -n "$ok" ]; then
  printf 'Content-Type: text/plain\r\n\r\n%s\nschema %s\n' "$APP_VERSION" "$s"
else
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n%s cannot read schema %s (reads %s)\n' \
    "$APP_VERSION" "${s:-?}" "$APP_SCHEMA"
fi
