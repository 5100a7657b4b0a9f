#!/bin/sh
# One client connection of the keep-alive server (`nc -ll -e` hands it the socket as stdin/stdout):
# HTTP/1.1 keep-alive answers with Content-Length to GET and HEAD of /, /version and /healthz (404
# otherwise), closing the connection once it sat idle KEEPALIVE_IDLE seconds (default 0.04) after an
# answer, as the keep-alive timeouts of gunicorn, Node and most app servers do. The first request gets
# KEEPALIVE_FIRST seconds (default 10), as their header timeouts give a new connection: closing a fresh
# connection after 40 ms cut requests that a loaded proxy wrote a little late. Request bodies are not read.
idle=${KEEPALIVE_IDLE:-0.04}
wait=${KEEPALIVE_FIRST:-10}
cr=$(printf '\r')
while read -r -t "$wait" method target version; do
  wait=$idle
  close=
  [ "${version%"$cr"}" = HTTP/1.1 ] || close=1
  while IFS= read -r -t 10 line; do
    line=${line%"$cr"}
    [ -z "$line" ] && break
    case "$line" in [Cc]onnection:*[Cc]lose*) close=1 ;; esac
  done
  status="200 OK"
  case "${target%%\?*}" in
    /|/index.html|/version) body="$APP_VERSION" ;;
    /healthz) body=ok ;;
    *) status="404 Not Found" body="not found" ;;
  esac
  [ "$method" = HEAD ] && out= || out="$body
"
  printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s' "$status" \
    $((${#body} + 1)) "${close:+Connection: close$cr
}" "$out"
  [ -n "$close" ] && exit 0
done
