#!/bin/sh
# Lay out the web root for this version and mode, then serve it in the foreground.
set -e
[ "$APP_MODE" = crash ] && { echo "testapp $APP_VERSION: crashing on purpose" >&2; exit 3; }
mkdir -p /www/cgi-bin
echo "$APP_VERSION" > /www/version
cp /app/cgi-bin/* /www/cgi-bin/
if [ "$APP_MODE" = fail500 ]; then
  cp /app/cgi-bin/fail /www/cgi-bin/index.cgi
elif [ "$APP_MODE" = schema ]; then
  cp /app/schema.cgi /www/cgi-bin/index.cgi
else
  echo "$APP_VERSION" > /www/index.html
fi
# unhealthy: no /healthz at all, so every probe gets 404
[ "$APP_MODE" = unhealthy ] || echo ok > /www/healthz
echo "testapp $APP_VERSION ($APP_MODE) listening on :$PORT" >&2
# flaky / sick: /healthz follows the probes, counted from httpd's log (the toggle happens once an answer
# was sent, so it applies to the next probe): flaky alternates pass, fail, pass, ...; sick passes the
# first SICK_AFTER (default 3) probes, then fails for good.
follow_probes() {
  n=0 asking=
  while IFS= read -r line; do
    echo "$line" >&2
    case "$line" in
      *": url:/healthz") asking=${line%%: url:*} ;;
      "$asking: response:"*)
        n=$((n + 1)) asking=
        if [ "$APP_MODE" = flaky ] && [ $((n % 2)) -eq 0 ]; then echo ok > /www/healthz
        elif [ "$APP_MODE" = flaky ] || [ "$n" -ge "${SICK_AFTER:-3}" ]; then rm -f /www/healthz; fi ;;
    esac
  done
}
# noterm: httpd itself is PID 1 with SIGTERM ignored (an ignored signal stays ignored across exec), like an
# app running as PID 1 without a SIGTERM handler: `docker stop` waits out its whole timeout, then kills it.
if [ "$APP_MODE" = noterm ]; then
  trap "" TERM
  exec httpd -f -v -p "$PORT" -h /www
fi
# httpd as PID 1 would ignore SIGTERM (docker stop would wait its full timeout): run it as a child
# and let this shell turn SIGTERM into a prompt exit.
case "$APP_SERVER:$APP_MODE" in
  keepalive:ok) nc -ll -p "$PORT" -e /app/keepalive.sh & ;;
  keepalive:*) echo "testapp: SERVER=keepalive serves MODE=ok only" >&2; exit 2 ;;
  *:flaky|*:sick) httpd -f -vv -p "$PORT" -h /www 2>&1 | follow_probes & ;;
  *) httpd -f -v -p "$PORT" -h /www & ;;
esac
child=$!
trap 'kill "$child" 2>/dev/null; exit 0' TERM INT
wait "$child"
