import sys
import textwrap
from pathlib import Path

import pytest

from controller.config.duration import DurationError, format_duration, parse_duration
from controller.config.model import MAX_REPLICAS, CanaryOptions, Config, ConfigError, HealthCheck, Volume
from controller.config.overrides import service_from_flags, with_overrides
from controller.config.reader import load_config, preset_steps
from controller.errors import TurnoutError
from controller.hardening import DEFAULT_CAP_ADD, DEFAULT_PIDS_LIMIT
from proxy.config import ProxyConfig
from proxy.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]

FULL_EXAMPLE = """
[proxy]
listen = "127.0.0.1:8000"
state_dir = "state"
admin_socket = "/tmp/turnout-test.sock"
connect_timeout = "2s"
hold_timeout = "10s"
max_header_bytes = 16384
trusted_proxies = ["10.0.0.1"]
retries = 0

[services.web]
image = "myapp:v1"
port = 8080
replicas = 2
host = "Web.localhost"
path_prefix = "/"
strategy = "rolling"
env = { KEY = "value", PORT = 8080, DEBUG = true }
command = "httpd -f -p 8080"
volumes = { "./data" = "/data", "/etc/ssl" = "/ssl" }
labels = { team = "x" }
mem_limit = "256m"
cpus = 0.5
sticky = true
override = "header-secret"
override_secret = "0123456789abcdef-web"
hold_timeout = "5s"
drain_timeout = "30s"

[services.web.health]
path = "/healthz"
interval = "1s"
timeout = "500ms"
healthy = 2
unhealthy = 3
start_timeout = "1m30s"

[services.web.canary]
steps = [5, 25, 50, 100]
step_pause = "manual"
max_error_rate = 0.1
max_p99_ratio = 1.5
min_requests = 50
analysis_interval = "2s"

[services.web.rolling]
max_surge = 0
max_unavailable = 1

[services.web.bluegreen]
keep_old = "5m"
preview = true

[services.api]
upstreams = ["127.0.0.1:9000", "[::1]:9001"]
host = ["api.localhost", "api.example.com"]
override = "trusted"
override_networks = ["10.0.0.0/8", "::1"]
"""


def write(tmp_path, text, name="turnout.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- durations ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("1h2m3s", 3723), ("0s", 0),
    ("1.5s", 1.5), (" 2S ", 2), ("10", 10), (2, 2), (0.25, 0.25),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "s", "5 m", "5d", "-1s", "1m-30s", "abc", True, None, [1], -3,
                                 float("nan")])
def test_parse_duration_refuses_and_names_where(bad):
    with pytest.raises(DurationError, match=r"^services\.web\.health\.interval: ") as info:
        parse_duration(bad, "services.web.health.interval")
    assert isinstance(info.value, ValueError) and isinstance(info.value, TurnoutError)


@pytest.mark.parametrize(("seconds", "text"),
                         [(0, "0s"), (0.5, "500ms"), (90, "1m30s"), (3600, "1h"), (1.5, "1.5s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text, "x") == seconds


# -- the full example and the defaults -------------------------------------------------------------------

def test_full_example_parses(tmp_path):
    config = load_config(write(tmp_path, FULL_EXAMPLE))
    assert config.source == tmp_path / "turnout.toml"
    assert config.state_dir == tmp_path / "state"
    assert config.journal_path == tmp_path / "state" / "journal.sqlite3"
    proxy = config.proxy
    assert proxy.listen == "127.0.0.1:8000" and proxy.admin_socket == "/tmp/turnout-test.sock"
    assert proxy.connect_timeout == 2 and proxy.hold_timeout == 10 and proxy.max_header_bytes == 16384
    assert proxy.trusted_proxies == ("10.0.0.1",) and proxy.retries == 0

    web = config.services["web"]
    assert web.managed and web.name == "web" and web.image == "myapp:v1" and web.port == 8080
    assert web.replicas == 2 and web.hosts == ("web.localhost",) and web.path_prefix == "/"
    assert web.health == HealthCheck("/healthz", 1.0, 0.5, 2, 3, 90.0)
    assert web.health.to_proxy().healthy == 2 and web.health.to_proxy().unhealthy == 3
    assert web.strategy == "rolling"
    assert web.env == {"KEY": "value", "PORT": "8080", "DEBUG": "true"}
    assert web.command == ("httpd", "-f", "-p", "8080")
    assert web.volumes == (Volume(str(tmp_path / "data"), "/data"), Volume("/etc/ssl", "/ssl"))
    assert str(web.volumes[1]) == "/etc/ssl:/ssl:rw"
    assert web.labels == {"team": "x"} and web.mem_limit == 256 * 1024 * 1024 and web.cpus == 0.5
    assert web.sticky and web.hold_timeout == 5 and web.drain_timeout == 30
    assert (web.override, web.override_secret) == ("header-secret", "0123456789abcdef-web")
    assert web.canary == CanaryOptions((5, 25, 50, 100), None, 0.1, 1.5, 50, 2.0)
    assert web.canary.manual
    assert (web.rolling.max_surge, web.rolling.max_unavailable) == (0, 1)
    assert web.bluegreen.keep_old == 300 and web.bluegreen.preview

    api = config.services["api"]
    assert not api.managed and api.upstreams == ("127.0.0.1:9000", "[::1]:9001")
    assert api.image is None and api.port is None and api.health is None
    assert api.hosts == ("api.localhost", "api.example.com")
    assert (api.override, api.override_networks) == ("trusted", ("10.0.0.0/8", "::1"))


def test_defaults_without_a_file():
    config = load_config(None)
    assert config == Config()
    assert config.services == {} and config.source is None
    assert config.proxy.listen == "127.0.0.1:8000"
    assert config.state_dir == Path(".turnout")
    assert Path(config.proxy.admin_socket) == Path(".turnout/admin.sock")


def test_an_empty_file_gives_defaults_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.services == {} and config.state_dir == tmp_path / ".turnout"
    assert config.proxy.admin_socket == str(tmp_path / ".turnout" / "admin.sock")


def test_minimal_service_takes_defaults(tmp_path):
    config = load_config(write(tmp_path, '[services.web]\nport = 8080\n'))
    web = config.services["web"]
    assert web.image is None and web.replicas == 1 and web.strategy == "rolling"
    assert web.health == HealthCheck() and web.canary == CanaryOptions()
    assert web.hosts == () and web.env == {} and web.command is None and web.volumes == ()


def test_demo_config_parses():
    config = load_config(REPO / "compose" / "demo" / "turnout.toml")
    web = config.services["web"]
    assert web.image == "turnout-testapp:v1" and web.port == 8080 and web.replicas == 2
    assert web.compose_file == REPO / "compose" / "demo" / "compose.yml" and web.compose_service == "web"
    assert web.canary.steps[-1] == 100


# -- every bad value names its key and its file --------------------------------------------------------------

WEB = '[services.web]\nport = 80\n'
CANARY = WEB + '[services.web.canary]\n'
BAD = [
    ('[proxi]\nlisten = "x"', "proxi", "unknown key"),
    ('[proxy]\nlisten = "nowhere"', "proxy.listen", "host:port"),
    ('[proxy]\nlisten = 8000', "proxy.listen", "string"),
    ('[proxy]\nlistne = "127.0.0.1:1"', "proxy.listne", "unknown key"),
    ('[proxy]\nidle_timeout = "soon"', "proxy.idle_timeout", "not a duration"),
    ('[proxy]\nidle_timeout = "0s"', "proxy.idle_timeout", "longer than 0"),
    ('[proxy]\nmax_connections = 0', "proxy.max_connections", "at least 1"),
    ('[proxy]\nmax_header_bytes = 10', "proxy.max_header_bytes", "at least 1024"),
    ('[proxy]\nretries = -1', "proxy.retries", "at least 0"),
    ('[proxy]\ntrusted_proxies = [1]', "proxy.trusted_proxies", "list"),
    ('[proxy]\nadmin_tcp = "127.0.0.1:8001"', "proxy.admin_tcp", "admin_token"),
    ('[proxy]\nadmin_socket = "/' + "x" * 120 + '"', "proxy.admin_socket", "too long"),
    ('services = 3', "services", "must be a table"),
    ('[services.web]\nport = 80\nimage = "a"\nfoo = 1', "services.web.foo", "unknown key"),
    ('[services."bad name"]\nport = 80', "services.bad name", "not a valid service name"),
    ('[services.web]\nimage = "a:v1"', "services.web.port", "required"),
    ('[services.web]\nport = 0', "services.web.port", "at least 1"),
    ('[services.web]\nport = 70000', "services.web.port", "at most 65535"),
    ('[services.web]\nport = "80"', "services.web.port", "whole number"),
    ('[services.web]\nport = 80\nimage = "my app"', "services.web.image", "spaces"),
    ('[services.web]\nport = 80\nimage = ""', "services.web.image", "non-empty"),
    ('[services.web]\nport = 80\nreplicas = 0', "services.web.replicas", "at least 1"),
    ('[services.web]\nport = 80\nreplicas = true', "services.web.replicas", "whole number"),
    ('[services.web]\nport = 80\nstrategy = "yolo"', "services.web.strategy", "one of bigbang"),
    ('[services.web]\nport = 80\nhost = "a b"', "services.web.host", "not a host name"),
    ('[services."web\\n"]\nport = 80', "services.web\n", "not a valid service name"),
    (WEB + 'override = "on"', "services.web.override", "must be one of off, header-secret, trusted"),
    (WEB + 'override = "header-secret"', "services.web.override_secret", "required with override"),
    (WEB + 'override = "header-secret"\noverride_secret = "short"', "services.web.override_secret",
     "16-256 characters"),
    (WEB + 'override_secret = "0123456789abcdef"', "services.web.override_secret", "only with override"),
    (WEB + 'override = "trusted"', "services.web.override_networks", "required with override"),
    (WEB + 'override = "trusted"\noverride_networks = ["10.0.0.0/40"]', "services.web.override_networks",
     "not an address or CIDR"),
    ('[services.web]\nport = 80\nhost = []', None, None),  # an empty list is simply no host rule
    ('[services.web]\nport = 80\npath_prefix = "api"', "services.web.path_prefix", "start with '/'"),
    ('[services.web]\nport = 80\nhealth = { path = "healthz" }', "services.web.health.path", "start with"),
    ('[services.web]\nport = 80\nhealth = { interval = "fast" }', "services.web.health.interval",
     "not a duration"),
    # Health takes the proxy's own bounds (proxy/specs.py HEALTH_SECONDS, HEALTH_THRESHOLDS).
    ('[services.web]\nport = 80\nhealth = { timeout = 0 }', "services.web.health.timeout", "between 0.01"),
    ('[services.web]\nport = 80\nhealth = { interval = "1ms" }', "services.web.health.interval",
     "between 0.01 and 3600 seconds, got 0.001"),
    ('[services.web]\nport = 80\nhealth = { timeout = "2h" }', "services.web.health.timeout", "between 0.01"),
    ('[services.web]\nport = 80\nhealth = { healthy = 0 }', "services.web.health.healthy", "1-100"),
    ('[services.web]\nport = 80\nhealth = { unhealthy = 101 }', "services.web.health.unhealthy", "1-100"),
    ('[services.web]\nport = 80\nhealth = { healthy = 2.5 }', "services.web.health.healthy", "whole number"),
    ('[services.web]\nport = 80\nreplicas = 101', "services.web.replicas", "at most 100"),
    ('[services.web]\nport = 80\npids_limit = -1', "services.web.pids_limit", "at least 0"),
    ('[services.web]\nport = 80\ncap_add = ["SYS_ADMIN"]', "services.web.cap_add", "cannot be added"),
    ('[services.web]\nport = 80\ncap_add = "ALL"', "services.web.cap_add", "cannot be added"),
    ('[services.web]\nport = 80\ncap_drop = ["NET_RAWW"]', "services.web.cap_drop", "not a Linux capability"),
    ('[services.web]\nport = 80\nsecurity_opt = ["seccomp=unconfined"]', "services.web.security_opt",
     "not allowed"),
    ('[services.web]\nport = 80\nsecurity_opt = ["apparmor=unconfined"]', "services.web.security_opt",
     "not allowed"),
    ('[proxy]\nadmin_token = "short"', "proxy.admin_token", "at least 32 characters, got 5"),
    ('[proxy]\nadmin_token = "' + "x" * 31 + ' y"', "proxy.admin_token", "without spaces"),
    ('[proxy]\nadmin_token = "' + "x" * 32 + '"\nadmin_token_file = "t"', "proxy.admin_token_file",
     "cannot be combined"),
    ('[proxy]\nadmin_token_file = "missing-token"', "proxy.admin_token_file", "cannot read"),
    ('[services.web]\nport = 80\nhealth = { rise = 2 }', "services.web.health.rise", "unknown key"),
    ('[services.web]\nport = 80\nhealth = "/healthz"', "services.web.health", "must be a table"),
    ('[services.web]\nport = 80\nenv = ["A=1"]', "services.web.env", "table"),
    ('[services.web]\nport = 80\nenv = { A = [1] }', "services.web.env.A", "string or number"),
    ('[services.web]\nport = 80\ncommand = []', "services.web.command", "non-empty list"),
    ('[services.web]\nport = 80\ncommand = "echo \'unclosed"', "services.web.command", "cannot split"),
    ('[services.web]\nport = 80\nvolumes = ["/a"]', "services.web.volumes", "source:target"),
    ('[services.web]\nport = 80\nvolumes = ["/a:rel"]', "services.web.volumes", "absolute path"),
    ('[services.web]\nport = 80\nvolumes = ["/a:/b:rx"]', "services.web.volumes", "ro or rw"),
    ('[services.web]\nport = 80\nvolumes = ["bad name!:/b"]', "services.web.volumes", "volume name"),
    ('[services.web]\nport = 80\nvolumes = 3', "services.web.volumes", "table of source"),
    ('[services.web]\nport = 80\nlabels = { "turnout.service" = "x" }', "services.web.labels", "reserved"),
    ('[services.web]\nport = 80\nmem_limit = "lots"', "services.web.mem_limit", "size such as"),
    ('[services.web]\nport = 80\nmem_limit = "1m"', "services.web.mem_limit", "at least 6m"),
    ('[services.web]\nport = 80\ncpus = 0', "services.web.cpus", "greater than 0"),
    ('[services.web]\nport = 80\nsticky = "yes"', "services.web.sticky", "true or false"),
    ('[services.web]\nport = 80\nhold_timeout = "0s"', "services.web.hold_timeout", "longer than 0"),
    ('[services.web]\nport = 80\ndrain_timeout = "1x"', "services.web.drain_timeout", "not a duration"),
    (CANARY + 'steps = [5, 50]', "services.web.canary.steps",
     "last step must be 100"),
    (CANARY + 'steps = [50, 25, 100]', "services.web.canary.steps",
     "strictly increasing"),
    (CANARY + 'steps = [5, 5, 100]', "services.web.canary.steps",
     "strictly increasing"),
    (CANARY + 'steps = [0, 100]', "services.web.canary.steps",
     "1..100"),
    (CANARY + 'steps = [50, 150]', "services.web.canary.steps",
     "1..100"),
    (CANARY + 'steps = []', "services.web.canary.steps", "non-empty"),
    (CANARY + 'steps = [2.5, 100]', "services.web.canary.steps",
     "whole percentage"),
    (CANARY + 'step_pause = "later"', "services.web.canary.step_pause",
     "not a duration"),
    (CANARY + 'preset = "canary10"', "services.web.canary.preset",
     "unknown preset"),
    (CANARY + 'preset = "canary100-5m"', "services.web.canary.preset",
     "unknown preset"),
    (CANARY + 'preset = "linear10-xyz"', "services.web.canary.preset",
     "unknown preset"),
    (CANARY + 'preset = "all-at-once"\nsteps = [100]',
     "services.web.canary.steps", "cannot be combined with preset"),
    (CANARY + 'max_error_rate = 1.5',
     "services.web.canary.max_error_rate", "at most 1"),
    (CANARY + 'max_p99_ratio = 0.5',
     "services.web.canary.max_p99_ratio", "at least 1"),
    (CANARY + 'min_requests = -1',
     "services.web.canary.min_requests", "at least 0"),
    (CANARY + 'analysis_interval = 0',
     "services.web.canary.analysis_interval", "longer than 0"),
    (CANARY + 'weights = [1]', "services.web.canary.weights",
     "unknown key"),
    (WEB + '[services.web.rolling]\nmax_surge = 0', "services.web.rolling.max_surge",
     "cannot both be 0"),
    (WEB + '[services.web.rolling]\nmax_unavailable = -1',
     "services.web.rolling.max_unavailable", "at least 0"),
    (WEB + '[services.web.bluegreen]\nkeep_old = "forever"',
     "services.web.bluegreen.keep_old", "not a duration"),
    (WEB + '[services.web.bluegreen]\npreview = 1', "services.web.bluegreen.preview",
     "true or false"),
    ('[services.api]\nupstreams = []', "services.api.upstreams", "at least one"),
    ('[services.api]\nupstreams = ["nohost"]', "services.api.upstreams", "host:port"),
    ('[services.api]\nupstreams = ["h:1", "h:1"]', "services.api.upstreams", "twice"),
    ('[services.api]\nupstreams = ["h:1"]\nimage = "a:v1"', "services.api.image", "static upstreams"),
    ('[services.api]\nupstreams = ["h:1"]\nport = 80', "services.api.port", "static upstreams"),
    ('[services.api]\nupstreams = ["h:1"]\ncompose = "c.yml"', "services.api.compose", "static upstreams"),
    ('[services.api]\nupstreams = ["h:1"]\n[services.api.canary]\nsteps = [100]', "services.api.canary",
     "static upstreams"),
    ('[services.web]\nport = 80\nservice = "web"', "services.web.service", "needs `compose`"),
    ('[services.web]\nport = 80\ncompose = "missing.yml"', "services.web.compose", "not found"),
    (WEB + '[[services.web.rules]]\nname = "x"\nmatch = { header = { X-Canary = "regex:a(" } }\n'
     'to = "canary"',
     "services.web.rules[0].match.header.X-Canary", "bad regex 'a('"),
    (WEB + '[[services.web.rules]]\nname = "x"\nmatch = { body = { a = "1" } }\nto = "canary"',
     "services.web.rules[0].match.body", "unknown match key"),
    (WEB + '[[services.web.rules]]\nname = "x"\nmatch = { cookie = { a = "1" } }\nto = "canary"\n'
     '[[services.web.rules]]\nname = "y"\nmatch = { hash = { cookie = "id" } }\nto = "canary"',
     "services.web.rules[1].match.hash.percent", "required"),
    (WEB + 'rules = "all"', "services.web.rules", "list of rules"),
    (WEB + '[services.web.ab]\nmatch = { header = { X = "regex:(" } }', "services.web.ab.match.header.X",
     "bad regex"),
    (WEB + '[services.web.ab]\nmatch = "body:x=1"', "services.web.ab.match", "is not one of header:NAME"),
    (WEB + '[services.web.ab]\nthen = "wait"', "services.web.ab.then", "promote, canary"),
    (WEB + '[services.web.mirror]\npercent = 0', "services.web.mirror.percent", "above 0"),
    (WEB + '[services.web.mirror]\nmax_body = "big"', "services.web.mirror.max_body", "such as 64KiB"),
    (WEB + '[services.web.mirror]\nignore = ["generated_at"]', "services.web.mirror.ignore", "json:$.path"),
    (WEB + '[services.web.mirror]\nmirror_to = "v2"', "services.web.mirror.mirror_to", "unknown key"),
    (CANARY + 'max_diff_rate = 2', "services.web.canary.max_diff_rate", "at most 1"),
    (WEB + '[services.web.ab]\nduration = "0s"', "services.web.ab.duration", "longer than 0"),
    ('[services.api]\nupstreams = ["h:1"]\n[services.api.ab]\nduration = "1m"', "services.api.ab",
     "static upstreams"),
    ('[services.a]\nport = 80\n[services.b]\nport = 81', "services.b.host", "already routed to 'a'"),
    ('[services.a]\nport = 80\nhost = "x.localhost"\n[services.b]\nport = 81\nhost = "X.localhost"',
     "services.b.host", "already routed"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD,
                         ids=[f"{i}-{case[1]}" for i, case in enumerate(BAD)])
def test_bad_values_name_the_key_and_the_file(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    if key is None:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.key == key, str(error)
    assert problem in error.problem, str(error)
    assert error.source == path
    assert str(error).startswith(f"{path}: {key}: ")
    assert isinstance(error, ValueError) and isinstance(error, TurnoutError)


def test_proxy_config_errors_carry_their_key():
    """ProxyConfig's own checks raise a ValidationError with the key; the reader places it (`proxy.`)
    without parsing the message."""
    with pytest.raises(ValidationError) as info:
        ProxyConfig(admin_tcp="127.0.0.1:8001")
    assert (info.value.key, info.value.field) == ("admin_tcp", "admin_tcp")
    with pytest.raises(ValidationError) as info:
        ProxyConfig(admin_token="x" * 31)
    assert info.value.key == "admin_token" and "at least 32" in info.value.message
    assert ProxyConfig(admin_token="x" * 32).admin_token == "x" * 32


TOKEN = "k3y-" + "0123456789abcdef" * 2  # 36 characters


def test_admin_token_file_is_read_and_stripped(tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    (tmp_path / "token").chmod(0o600)
    text = '[proxy]\nadmin_tcp = "127.0.0.1:8001"\nadmin_token_file = "token"\n'
    assert load_config(write(tmp_path, text)).proxy.admin_token == TOKEN
    (tmp_path / "token").chmod(0o640)  # a group may read it
    assert load_config(write(tmp_path, text)).proxy.admin_token == TOKEN


@pytest.mark.parametrize(("content", "mode", "problem"), [
    (TOKEN, 0o644, "open to other users (mode 0644): chmod 600"),
    (TOKEN, 0o620, "open to other users"),
    (" \n", 0o600, "is empty"),
    ("short\n", 0o600, "at least 32 characters, got 5"),
])
def test_a_bad_admin_token_file_is_refused_naming_the_key(tmp_path, content, mode, problem):
    (tmp_path / "token").write_text(content)
    (tmp_path / "token").chmod(mode)
    path = write(tmp_path, '[proxy]\nadmin_token_file = "token"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.source) == ("proxy.admin_token_file", path)
    assert problem in info.value.problem, str(info.value)


def test_container_hardening_defaults_and_per_service_settings(tmp_path):
    text = ('[services.web]\nport = 80\n'
            '[services.strict]\nport = 81\nhost = "s"\ncap_add = []\npids_limit = 64\n'
            '[services.loose]\nport = 82\nhost = "l"\ncap_drop = []\ncap_add = ["cap_net_raw", "NET_RAW"]\n'
            'security_opt = []\npids_limit = 0\n'
            '[services.legacy]\nport = 83\nhost = "x"\ncap_drop = "NET_RAW"\nmem_limit = "64m"\ncpus = 1\n'
            'security_opt = ["no-new-privileges:true", "apparmor=my-profile"]\n')
    services = load_config(write(tmp_path, text)).services
    web = services["web"]
    assert (web.pids_limit, web.cap_drop, web.cap_add, web.security_opt) == (
        DEFAULT_PIDS_LIMIT, ("ALL",), DEFAULT_CAP_ADD, ("no-new-privileges",))
    assert web.mem_limit is None and web.cpus is None  # no memory or CPU limit unless configured
    assert (services["strict"].cap_add, services["strict"].pids_limit) == ((), 64)
    loose = services["loose"]
    assert (loose.cap_drop, loose.cap_add, loose.security_opt, loose.pids_limit) == ((), ("NET_RAW",), (), 0)
    legacy = services["legacy"]
    assert legacy.cap_drop == ("NET_RAW",) and legacy.cap_add == DEFAULT_CAP_ADD
    assert legacy.security_opt == ("no-new-privileges:true", "apparmor=my-profile")


def test_replicas_cap_is_one_number():
    assert MAX_REPLICAS == 100
    assert service_from_flags("web", "app:v1", 8080, replicas=MAX_REPLICAS).replicas == MAX_REPLICAS


def test_different_path_prefixes_may_share_a_host(tmp_path):
    text = '[services.a]\nport = 80\n[services.b]\nport = 81\npath_prefix = "/b"'
    config = load_config(write(tmp_path, text))
    assert set(config.services) == {"a", "b"}


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.source == tmp_path / "nope.toml"
    bad = write(tmp_path, "[proxy\nlisten = ")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert str(info.value).startswith(str(bad))


# -- canary presets --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("preset", "steps", "pause"), [
    ("canary10-5m", (10, 100), 300),
    ("canary25-30s", (25, 100), 30),
    ("linear10-1m", (10, 20, 30, 40, 50, 60, 70, 80, 90, 100), 60),
    ("linear30-10s", (30, 60, 90, 100), 10),
    ("linear50-1h", (50, 100), 3600),
    ("all-at-once", (100,), 0),
])
def test_presets(tmp_path, preset, steps, pause):
    assert preset_steps(preset) == (steps, pause)
    text = f'[services.web]\nport = 80\ncanary = {{ preset = "{preset}", min_requests = 5 }}'
    canary = load_config(write(tmp_path, text)).services["web"].canary
    assert (canary.steps, canary.step_pause, canary.preset, canary.min_requests) == (steps, pause, preset, 5)


# -- Compose files -----------------------------------------------------------------------------------------

COMPOSE = """
services:
  app:
    image: testapp:v1
    command: ["httpd", "-f"]
    ports: ["127.0.0.1:8000:8080/tcp"]
    environment:
      - MODE=ok
      - FROM_HOST
      - UNSET_ON_HOST
    labels: {team: web}
    volumes:
      - ./html:/www:ro
      - type: volume
        source: cache
        target: /cache
    mem_limit: 128m
    cpus: "0.5"
    pids_limit: 100
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE]
    security_opt: [no-new-privileges:true]
    restart: unless-stopped
    x-turnout:
      replicas: 3
      host: app.localhost
      health: {path: /up, interval: 250ms}
      strategy: canary
      canary: {preset: linear25-10s}
"""


def test_a_service_reads_its_container_from_a_compose_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "yes")
    monkeypatch.delenv("UNSET_ON_HOST", raising=False)
    (tmp_path / "stack").mkdir()
    write(tmp_path / "stack", COMPOSE, "compose.yml")
    path = write(tmp_path, '[services.web]\ncompose = "stack/compose.yml"\nservice = "app"\nreplicas = 2\n')
    web = load_config(path).services["web"]
    assert web.compose_file == tmp_path / "stack" / "compose.yml" and web.compose_service == "app"
    assert web.image == "testapp:v1" and web.port == 8080 and web.command == ("httpd", "-f")
    assert web.env == {"MODE": "ok", "FROM_HOST": "yes"}
    assert web.labels == {"team": "web"} and web.mem_limit == 128 * 1024 * 1024 and web.cpus == 0.5
    assert (web.pids_limit, web.cap_drop, web.cap_add, web.security_opt) == (
        100, ("ALL",), ("NET_BIND_SERVICE",), ("no-new-privileges:true",))
    assert web.volumes == (Volume(str(tmp_path / "stack" / "html"), "/www", read_only=True),
                           Volume("cache", "/cache"))
    assert web.replicas == 2  # turnout.toml replaces x-turnout
    assert web.hosts == ("app.localhost",) and web.health.path == "/up" and web.health.interval == 0.25
    assert web.strategy == "canary" and web.canary.steps == (25, 50, 75, 100)


def test_compose_service_defaults_to_the_turnout_service_name(tmp_path):
    write(tmp_path, "services:\n  web:\n    image: a:v1\n    expose: [9000]\n", "compose.yml")
    web = load_config(write(tmp_path, '[services.web]\ncompose = "compose.yml"')).services["web"]
    assert (web.image, web.port, web.compose_service) == ("a:v1", 9000, "web")


@pytest.mark.parametrize(("compose", "key", "problem"), [
    ("services:\n  web:\n    image: a\n    ports: ['80', '81']", "services.web.ports", "several"),
    ("services:\n  web:\n    image: a\n    ports: ['8000-8010']", "services.web.ports[0]", "container port"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    environment: 3", "services.web.environment",
     "mapping or a list"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    volumes: ['/only']", "services.web.volumes[0]",
     "source:target"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    x-turnout: {replica: 2}",
     "services.web.x-turnout.replica", "unknown key"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    x-turnout: {upstreams: ['h:1']}",
     "services.web.x-turnout.upstreams", "unknown key"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    x-turnout: {health: {interval: never}}",
     "services.web.x-turnout.health.interval", "not a duration"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    x-turnout: {canary: {steps: [10]}}",
     "services.web.x-turnout.canary.steps", "last step must be 100"),
    ("services:\n  web:\n    image: a b\n    ports: ['80']", "services.web.image", "spaces"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    mem_limit: huge", "services.web.mem_limit",
     "size such as"),
    ("services:\n  web:\n    image: a\n    ports: ['80']\n    labels: {turnout.pool: x}",
     "services.web.labels", "reserved"),
    ("services:\n  web: [1]", "services.web", "mapping"),
    ("services: {\n", "", "not valid YAML"),
])
def test_errors_inside_a_compose_file_name_it(tmp_path, compose, key, problem):
    compose_path = write(tmp_path, compose, "compose.yml")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[services.web]\ncompose = "compose.yml"'))
    assert (info.value.key, info.value.source) == (key, compose_path), str(info.value)
    assert problem in info.value.problem


def test_a_compose_service_without_a_port_needs_one(tmp_path):
    write(tmp_path, "services:\n  web:\n    image: a:v1\n", "compose.yml")
    path = write(tmp_path, '[services.web]\ncompose = "compose.yml"')
    with pytest.raises(ConfigError, match=r"services\.web\.port: required") as info:
        load_config(path)
    assert info.value.source == path
    with_port = write(tmp_path, '[services.web]\ncompose = "compose.yml"\nport = 81')
    assert load_config(with_port).services["web"].port == 81


def test_a_missing_compose_service_lists_what_is_there(tmp_path):
    write(tmp_path, "services:\n  db: {image: pg}\n  cache: {image: redis}\n", "compose.yml")
    path = write(tmp_path, '[services.web]\ncompose = "compose.yml"\nservice = "app"')
    with pytest.raises(ConfigError, match=r"no service 'app' in .*compose.yml \(found: cache, db\)") as info:
        load_config(path)
    assert (info.value.key, info.value.source) == ("services.web.service", path)


def test_compose_without_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    write(tmp_path, "services:\n  web: {image: a}\n", "compose.yml")
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    path = write(tmp_path, '[services.web]\ncompose = "compose.yml"')
    with pytest.raises(ConfigError, match="needs PyYAML") as info:
        load_config(path)
    assert (info.value.key, info.value.source) == ("services.web.compose", path)


# -- the command line ---------------------------------------------------------------------------------------

def test_service_from_flags():
    web = service_from_flags("web", "app:v2", 8080, replicas=3, health_path="/up", host="Web.localhost",
                             strategy="bluegreen")
    assert web.managed and web.strategy == "bluegreen"
    assert (web.image, web.port, web.replicas) == ("app:v2", 8080, 3)
    assert web.health == HealthCheck(path="/up") and web.hosts == ("web.localhost",)
    assert service_from_flags("api", "a:v1", 80).strategy == "rolling"


@pytest.mark.parametrize(("kwargs", "flag", "problem"), [
    ({"port": 0}, "--port", "at least 1"),
    ({"replicas": 0}, "--replicas", "at least 1"),
    ({"replicas": 1_000_000_000}, "--replicas", "at most 100"),
    ({"port": None}, "--port", "required"),
    ({"health_path": "up"}, "--health-path", "start with '/'"),
    ({"strategy": "fast"}, "--strategy", "one of"),
    ({"host": "a b"}, "--host", "host name"),
    ({"image": "a b"}, "--image", "spaces"),
])
def test_service_from_flags_names_the_flag(kwargs, flag, problem):
    args = {"name": "web", "image": "app:v1", "port": 8080} | kwargs
    with pytest.raises(ConfigError) as info:
        service_from_flags(**args)
    assert (info.value.key, info.value.source) == (flag, "command-line options")
    assert problem in info.value.problem


def test_with_overrides_applies_and_validates_options():
    web = service_from_flags("web", "app:v1", 8080)
    changed = with_overrides(web, steps="10,50,100", step_pause="manual", max_surge=2, keep_old="1m",
                             strategy="canary", replicas=None)
    assert changed.canary.steps == (10, 50, 100) and changed.canary.manual
    assert changed.rolling.max_surge == 2 and changed.rolling.max_unavailable == 0
    assert changed.bluegreen.keep_old == 60 and changed.strategy == "canary" and changed.replicas == 1
    assert changed.canary.max_error_rate == web.canary.max_error_rate
    assert with_overrides(web) == web

    preset = with_overrides(changed, preset="canary20-1m")
    assert (preset.canary.steps, preset.canary.step_pause) == ((20, 100), 60)
    # A new step list keeps the current pause (and drops the preset's name).
    stepped = with_overrides(preset, steps=[50, 100])
    assert (stepped.canary.steps, stepped.canary.step_pause, stepped.canary.preset) == ((50, 100), 60, None)
    paused = with_overrides(changed, step_pause="30s")
    assert paused.canary.steps == (10, 50, 100) and paused.canary.step_pause == 30


@pytest.mark.parametrize(("options", "flag", "problem"), [
    ({"steps": "10,x,100"}, "--steps", "percentages"),
    ({"steps": [50, 10, 100]}, "--steps", "strictly increasing"),
    ({"step_pause": "soon"}, "--step-pause", "not a duration"),
    ({"preset": "canary10-5m", "steps": [5, 100]}, "--steps", "cannot be combined with preset"),
    ({"preset": "half"}, "--preset", "unknown preset"),
    ({"max_surge": 0}, "--max-surge", "cannot both be 0"),
    ({"max_error_rate": 2}, "--max-error-rate", "at most 1"),
    ({"keep_old": -1}, "--keep-old", "not a duration"),
    ({"strategy": "yolo"}, "--strategy", "one of"),
    ({"replicas": 0}, "--replicas", "at least 1"),
    ({"replicas": 101}, "--replicas", "at most 100"),
    ({"hold_timeout": "0s"}, "--hold-timeout", "longer than 0"),
    ({"colour": "red"}, "--colour", "unknown option"),
])
def test_with_overrides_names_the_flag(options, flag, problem):
    web = service_from_flags("web", "app:v1", 8080)
    with pytest.raises(ConfigError) as info:
        with_overrides(web, **options)
    assert (info.value.key, info.value.source) == (flag, "command-line options"), str(info.value)
    assert problem in info.value.problem


def test_static_services_take_no_deploy_options(tmp_path):
    api = load_config(write(tmp_path, '[services.api]\nupstreams = ["h:1"]')).services["api"]
    with pytest.raises(ConfigError, match="static upstreams"):
        with_overrides(api, strategy="canary")


def test_config_with_service_adds_without_changing_the_original():
    config = load_config(None)
    web = service_from_flags("web", "app:v1", 8080)
    assert config.with_service(web).services == {"web": web} and config.services == {}


# -- rules on the command line (`turnout rules set --rule`, `turnout deploy --match`) -------------------

def test_rules_from_flags_read_as_turnout_toml_does():
    from controller.config.overrides import rules_from_flags
    from controller.config.reader import match_text

    rules = rules_from_flags([["insiders", "header:X-Canary=always", "canary"],
                              ["beta", "hash:cookie:account_id=10%", "canary"],
                              ["fr", "query:lang=regex:fr(-..)?", "v2"],
                              ["c", "cookie:plan=prefix:pro", "stable"]])
    assert [r.to_dict() for r in rules] == [
        {"name": "insiders", "match": {"header": {"X-Canary": "always"}}, "to": "canary"},
        {"name": "beta", "match": {"hash": {"cookie": "account_id", "percent": 10}}, "to": "canary"},
        {"name": "fr", "match": {"query": {"lang": "regex:fr(-..)?"}}, "to": "v2"},
        {"name": "c", "match": {"cookie": {"plan": "prefix:pro"}}, "to": "stable"},
    ]
    assert [match_text(r.to_dict()["match"]) for r in rules] == [
        "header:X-Canary=always", "hash:cookie:account_id=10%", "query:lang=regex:fr(-..)?",
        "cookie:plan=prefix:pro"]


@pytest.mark.parametrize(("triples", "flag", "problem"), [
    ([["x", "header:X-Canary=regex:a(", "canary"]], "--rule x", "match.header.X-Canary: bad regex"),
    ([["x", "body:a=1", "canary"]], "--rule x", "is not one of header:NAME=VALUE"),
    ([["x", "hash:cookie:id=0", "canary"]], "--rule x", "match.hash.percent: must be above 0"),
    ([["x", "header:a=1", "no way"]], "--rule x", "to: must be canary, stable or a version"),
    ([["x y", "header:a=1", "canary"]], "--rule x y", "name: must be 1-63 characters"),
    ([["x", "header:a=1", "canary"], ["x", "query:b=2", "stable"]], "--rule", "duplicate rule 'x'"),
])
def test_rules_from_flags_name_the_flag(triples, flag, problem):
    from controller.config.overrides import rules_from_flags

    with pytest.raises(ConfigError) as info:
        rules_from_flags(triples)
    assert info.value.key == flag and problem in info.value.problem, str(info.value)


@pytest.mark.parametrize(("options", "flag", "problem"), [
    ({"match": "header:X=regex:("}, "--match.header.X", "bad regex"),
    ({"match": "ip:1.2.3.4"}, "--match", "is not one of"),
    ({"then": "later"}, "--then", "must be one of promote, canary"),
    ({"duration": "soon"}, "--duration", "not a duration"),
])
def test_ab_options_on_the_command_line_name_the_flag(options, flag, problem):
    with pytest.raises(ConfigError) as info:
        with_overrides(service_from_flags("web", "app:v1", port=80), **options)
    assert info.value.key == flag and problem in info.value.problem, str(info.value)


def test_ab_options_from_the_command_line_and_the_config():
    config = with_overrides(service_from_flags("web", "app:v1", port=80), match="hash:cookie:id=12.5",
                            duration="90s", then="canary")
    assert config.ab.match.to_dict() == {"name": "ab", "match": {"hash": {"cookie": "id", "percent": 12.5}},
                                         "to": "canary"}
    assert (config.ab.duration, config.ab.then) == (90.0, "canary")
    again = with_overrides(config, duration="1m")  # the other options stay
    assert (again.ab.match, again.ab.duration, again.ab.then) == (config.ab.match, 60.0, "canary")


def test_mirror_sizes_and_defaults(tmp_path):
    path = write(tmp_path, WEB + '[services.web.mirror]\nmax_body = "1MiB"\nmethods = ["GET"]\n')
    mirror = load_config(path).services["web"].mirror
    assert mirror.max_body == 1024 * 1024 and mirror.methods == ("GET",) and mirror.to == "canary"
    assert load_config(write(tmp_path, WEB)).services["web"].mirror is None
