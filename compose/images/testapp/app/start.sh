#!/bin/sh
# Lay out the web root for this version and mode, then serve it in the foreground.
set -e
[ "$APP_MODE" = crash ] && { echo "testapp $APP_VERSION: crashing on purpose" >&2; exit 3; }
mkdir -p /www/cgi-bin
echo "$APP_VERSION" > /www/version
cp /app/cgi-bin/* /www/cgi-bin/
if [ "$APP_MODE" = fail500 ]; then
  cp /app/cgi-bin/fail /www/cgi-bin/index.cgi
else
  echo "$APP_VERSION" > /www/index.html
fi
# unhealthy: no /healthz at all, so every probe gets 404
[ "$APP_MODE" = unhealthy ] || echo ok > /www/healthz
echo "testapp $APP_VERSION ($APP_MODE) listening on :$PORT" >&2
# httpd as PID 1 would ignore SIGTERM (docker stop would wait its full timeout): run it as a child
# and let this shell turn SIGTERM into a prompt exit.
httpd -f -v -p "$PORT" -h /www &
child=$!
trap 'kill "$child" 2>/dev/null; exit 0' TERM INT
wait "$child"
