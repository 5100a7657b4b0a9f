# Sourced by count_proxy.sh and profile_proxy.sh: the benchmark upstream, an nginx serving a 3-byte
# answer on / and a 16 KiB file on /16k, configured under $1 (its www/ and nginx.conf) on $2:$3.
write_upstream_nginx() {
  local dir=$1 host=$2 port=$3
  rm -rf "$dir"; mkdir -p "$dir/www"
  head -c 16384 /dev/zero | tr '\0' 'x' >"$dir/www/16k"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; sendfile on; default_type text/plain;
  client_body_temp_path $dir/tmp_body; proxy_temp_path $dir/tmp_proxy;
  fastcgi_temp_path $dir/tmp_fcgi; uwsgi_temp_path $dir/tmp_uwsgi; scgi_temp_path $dir/tmp_scgi;
  server { listen $host:$port; root $dir/www; location = / { return 200 "ok\n"; } }
}
CONF
}
