"""The deployment artefacts in deploy/: every YAML and JSON file parses and is consistent, the
PromQL in the alerts and the dashboard uses only what the proxy exports, the systemd units
are hardened and pass systemd-analyze, the scripts pass shellcheck, and the install and
reload flows run for real (the configurations deploy.sh renders, the unit's ExecStart and
ExecReload under load, deploy.sh/update.sh in a private mount namespace). No test touches
the machine's /etc, /usr/local/bin or services."""

import glob
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import boto3
import botocore.config
import pytest
import yaml

import harness

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
SCRIPTS = [os.path.join(DEPLOY, n) for n in ("deploy.sh", "update.sh", "lib.sh", "s3-crypt-proxy-reload")]
UNITS = {n: os.path.join(DEPLOY, "systemd", f"{n}.service") for n in ("s3-crypt-proxy", "memkey-server")}

# Every metric family the proxy exports (proxy/src/metrics.rs), with its labels. Histograms
# are exposed as _bucket (plus "le"), _sum and _count.
EXPORTED = {
    "s3_crypt_proxy_requests_total": {"method", "operation", "status"},
    "s3_crypt_proxy_bytes_encrypted_total": set(),
    "s3_crypt_proxy_bytes_decrypted_total": set(),
    "s3_crypt_proxy_bytes_received_total": set(),
    "s3_crypt_proxy_bytes_sent_total": set(),
    "s3_crypt_proxy_request_duration_seconds": {"operation"},
    "s3_crypt_proxy_key_loaded": set(),
    "s3_crypt_proxy_active_requests": set(),
    "s3_crypt_proxy_encryption_errors_total": {"type"},
    "s3_crypt_proxy_auth_failures_total": {"reason"},
    "s3_crypt_proxy_backend_errors_total": {"status"},
    "s3_crypt_proxy_backend_up": set(),
    "s3_crypt_proxy_key_memory_locked": set(),
    "s3_crypt_proxy_core_dumps_disabled": set(),
    "s3_crypt_proxy_key_conflict": set(),
    "s3_crypt_proxy_key_conflicts_total": set(),
    "s3_crypt_proxy_undeclared_chunk_size_reads_total": set(),
    "s3_crypt_proxy_key_source_info": {"kind", "state"},
    "s3_crypt_proxy_key_source_last_unseal_timestamp_seconds": set(),
    "s3_crypt_proxy_key_source_unseal_failures": {"reason"},
    "s3_crypt_proxy_client_requests_total": {"access_key", "class"},
    "s3_crypt_proxy_client_bytes_total": {"access_key", "direction"},
    "s3_crypt_proxy_client_throttled_total": {"access_key"},
    "s3_crypt_proxy_backend_requests_total": {"kind"},
    "s3_crypt_proxy_backend_connections_total": {"path"},
    "s3_crypt_proxy_backend_tls_handshakes_total": {"path"},
    "s3_crypt_proxy_read_plans_total": {"plan"},
}
HISTOGRAMS = {"s3_crypt_proxy_request_duration_seconds"}
TARGET_LABELS = {"instance", "job"}  # added by Prometheus at scrape time


def series_names():
    """Every series name a query may use -> its labels."""
    out = {}
    for name, labels in EXPORTED.items():
        if name in HISTOGRAMS:
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


# ---------------------------------------------------------------- PromQL (lexical)

FUNCTIONS = set("""abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join label_replace
last_over_time ln log10 log2 max_over_time min_over_time minute month predict_linear
present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
stddev_over_time stdvar_over_time sum_over_time time timestamp vector year""".split())
AGGREGATIONS = set("sum min max avg group stddev stdvar count count_values bottomk topk quantile".split())
KEYWORDS = set("by without on ignoring group_left group_right and or unless bool offset inf nan atan2".split())


def promql_references(expr):
    """(metric names, label names) an expression uses. Lexical, but strict: an identifier is
    a function, an aggregation, a keyword, or a metric name."""
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {w.strip() for w in body.split(",") if w.strip()}
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", e)
    e = re.sub(r"\boffset\s+\S+", " ", e)
    e = re.sub(r"(?<![a-zA-Z0-9_:])\d+(\.\d+)?(e[+-]?\d+)?", " ", e)
    metrics = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        follows = e[m.end():].lstrip()[:1]
        if word in KEYWORDS or word in AGGREGATIONS:
            continue
        if follows == "(":
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
            continue
        metrics.add(word)
    return metrics, labels


def check_promql(expr, where):
    known = series_names()
    metrics, labels = promql_references(expr)
    assert metrics, f"{where}: no metric in {expr!r}"
    unknown = metrics - set(known)
    assert not unknown, f"{where}: {sorted(unknown)} are not exported by the proxy ({expr!r})"
    allowed = set(TARGET_LABELS)
    for m in metrics:
        allowed |= known[m]
    assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} do not exist on {sorted(metrics)}"
    assert expr.count("(") == expr.count(")"), f"{where}: unbalanced parentheses in {expr!r}"
    return metrics


def test_promql_checker_itself():
    m, l = promql_references('histogram_quantile(0.99, sum by (le, operation) (rate(s3_crypt_proxy_request_duration_seconds_bucket{instance=~"$i"}[5m])))')
    assert m == {"s3_crypt_proxy_request_duration_seconds_bucket"} and l == {"le", "operation", "instance"}
    m, _ = promql_references("sum(rate(a_total[5m] offset 1h)) > 10 * sum(rate(b_total[1h]))")
    assert m == {"a_total", "b_total"}
    with pytest.raises(AssertionError):
        check_promql("rate(s3_crypt_proxy_requests_total_typo[5m])", "self-test")
    with pytest.raises(AssertionError):
        check_promql('sum by (bucket) (rate(s3_crypt_proxy_requests_total[5m]))', "self-test")
    with pytest.raises(AssertionError):
        promql_references("rte(s3_crypt_proxy_requests_total[5m])")


# ---------------------------------------------------------------- YAML and JSON

def yaml_files():
    files = []
    for pattern in ("deploy/**/*.yaml", "deploy/**/*.yml", "conf/**/*.yaml", "conf/**/*.yml"):
        files += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    return sorted(set(files))


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def test_every_yaml_file_parses():
    files = yaml_files()
    names = {os.path.relpath(f, ROOT) for f in files}
    for expected in ("conf/proxy.example.yaml", "conf/memkey.example.yaml", "deploy/prometheus/alerts.yaml",
                     "deploy/k8s/deployment.yaml", "deploy/k8s/secret.example.yaml", "deploy/k8s/networkpolicy.yaml"):
        assert expected in names
    for f in files:
        docs = load_all(f)
        assert docs, f"{f} holds no YAML document"
        for d in docs:
            assert isinstance(d, dict), f"{f}: a document is not a mapping"
    # Configuration files embedded in the example Secrets parse too.
    for doc in load_all(os.path.join(DEPLOY, "k8s", "secret.example.yaml")):
        for key, text in doc.get("stringData", {}).items():
            if key.endswith(".yaml"):
                assert isinstance(yaml.safe_load(text), dict), key


def alert_rules():
    doc = load_all(os.path.join(DEPLOY, "prometheus", "alerts.yaml"))[0]
    return [(g["name"], r) for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_are_complete_and_use_only_exported_metrics():
    rules = alert_rules()
    names = [r["alert"] for _, r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    used = set()
    for group, r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"].get("summary") and r["annotations"].get("description"), r["alert"]
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"]), r["for"]
        used |= check_promql(r["expr"], f"alert {r['alert']}")
    exprs = " ".join(r["expr"] for _, r in rules)
    # What the issue asks for: key not loaded, backend down, high 5xx, encryption and
    # authentication errors, auth failure spikes, p99 latency.
    assert "s3_crypt_proxy_key_loaded == 0" in exprs
    assert "s3_crypt_proxy_backend_up == 0" in exprs
    assert 'status=~"5.."' in exprs
    assert "s3_crypt_proxy_encryption_errors_total" in exprs
    assert sum("s3_crypt_proxy_auth_failures_total" in r["expr"] for _, r in rules) >= 2
    assert re.search(r"histogram_quantile\(0\.99,\s*sum by \([^)]*\ble\b", exprs)


def dashboard():
    with open(os.path.join(DEPLOY, "grafana", "s3-crypt-proxy.json")) as f:
        return json.load(f)


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def test_grafana_dashboard_parses_and_uses_only_exported_metrics():
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    panels = list(all_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    used, exprs = set(), []
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            exprs.append(t["expr"])
            used |= check_promql(t["expr"], f"panel {p['title']!r}")
    for v in variables.values():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
        if v["type"] == "query":
            assert m, q
            assert m.group(1) in series_names() and m.group(2) in series_names()[m.group(1)] | TARGET_LABELS, q
    joined = "\n".join(exprs)
    # Every exported family is on the dashboard somewhere.
    families = {re.sub(r"_(bucket|sum|count)$", "", u) if re.sub(r"_(bucket|sum|count)$", "", u) in HISTOGRAMS else u for u in used}
    assert families == set(EXPORTED), sorted(set(EXPORTED) - families)
    assert "sum by (operation) (rate(s3_crypt_proxy_requests_total" in joined
    assert "histogram_quantile(0.50," in joined and "histogram_quantile(0.99," in joined
    assert "s3_crypt_proxy_bytes_received_total" in joined and "s3_crypt_proxy_bytes_sent_total" in joined


# ---------------------------------------------------------------- systemd units

def unit_directives(path):
    """[section] -> list of (key, value); repeated keys kept, comments dropped."""
    out, section = {}, None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                out.setdefault(section, [])
                continue
            key, _, value = line.partition("=")
            out[section].append((key.strip(), value.strip()))
    return out


def values(unit, section, key):
    return [v for k, v in unit.get(section, []) if k == key]


COMMON_HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
    "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "PrivateDevices": "yes",
    "CapabilityBoundingSet": "", "AmbientCapabilities": "",
}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_has_the_hardening_directives(name):
    u = unit_directives(UNITS[name])
    for key, want in COMMON_HARDENING.items():
        assert values(u, "Service", key) == [want], f"{name}: {key}= should be {want!r}, is {values(u, 'Service', key)}"
    assert set(values(u, "Service", "RestrictAddressFamilies")[0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    filters = values(u, "Service", "SystemCallFilter")
    assert "@system-service" in filters and any(f.startswith("~@privileged") for f in filters), filters
    assert values(u, "Service", "LimitNOFILE"), name
    assert values(u, "Service", "User") and values(u, "Service", "User")[0] != "root"
    assert not values(u, "Service", "PrivateUsers"), "PrivateUsers would break the socket's group"
    assert values(u, "Install", "WantedBy") == ["multi-user.target"]


def test_memkey_unit_socket_directory_and_memory_locking():
    u = unit_directives(UNITS["memkey-server"])
    assert values(u, "Service", "User") == ["memkey"]
    assert values(u, "Service", "Group") == ["memkey-clients"], "the runtime directory and socket take this group"
    assert values(u, "Service", "RuntimeDirectory") == ["memkey"]
    assert values(u, "Service", "RuntimeDirectoryMode") == ["0750"]
    assert values(u, "Service", "LimitMEMLOCK") == ["16M"]
    assert not any("CAP_IPC_LOCK" in v for _, v in u["Service"]), "LimitMEMLOCK instead of a capability"
    # The socket path every configuration uses lives in that directory.
    memkey_example = load_all(os.path.join(ROOT, "conf", "memkey.example.yaml"))[0]
    proxy_example = load_all(os.path.join(ROOT, "conf", "proxy.example.yaml"))[0]
    assert memkey_example["server"]["unix_socket_path"] == proxy_example["memkey"]["socket_path"] == "/run/memkey/memkey.sock"
    assert values(u, "Service", "ExecStart")[0].split()[:3] == ["/usr/local/bin/memkey-server", "--config", "/etc/memkey/memkey.yaml"]


def test_proxy_unit_tracks_the_upgraded_process():
    u = unit_directives(UNITS["s3-crypt-proxy"])
    svc = dict(u["Service"])
    assert svc["Type"] == "forking"
    assert svc["User"] == "s3cp" and "memkey-clients" in svc["SupplementaryGroups"].split()
    assert svc["RuntimeDirectory"] == "s3-crypt-proxy"
    example = load_all(os.path.join(ROOT, "conf", "proxy.example.yaml"))[0]["server"]
    assert svc["PIDFile"] == example["pid_file"] == "/run/s3-crypt-proxy/proxy.pid"
    start = shlex.split(svc["ExecStart"])
    assert start[:2] == ["/usr/local/bin/s3-crypt-proxy", "run"] and "--daemon" in start
    reload = shlex.split(svc["ExecReload"])
    assert reload[0] == "/usr/local/bin/s3-crypt-proxy-reload" and reload[-1] == "$MAINPID"
    assert reload[reload.index("--pid-file") + 1] == svc["PIDFile"]
    assert reload[reload.index("--upgrade-sock") + 1] == example["upgrade_sock"]
    assert "kill" not in svc["ExecReload"]
    assert svc["Restart"] == "always"
    unit = dict(u["Unit"])
    assert "memkey-server.service" in unit["After"].split() and "memkey-server.service" in unit["Wants"].split()
    assert "memkey-server" not in unit.get("Requires", "") + unit.get("BindsTo", ""), \
        "a memkey-server restart must not restart the proxy (it keeps its keys)"
    assert "Delegate" not in svc, "the reload helper's processes must stay in the unit's cgroup"


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: scripts/bootstrap.sh installs Debian's systemd"
    # verify insists that the executables exist: point them at the debug builds.
    for name, path in UNITS.items():
        text = open(path).read()
        text = text.replace("/usr/local/bin/s3-crypt-proxy-reload", os.path.join(DEPLOY, "s3-crypt-proxy-reload"))
        text = text.replace("/usr/local/bin/", harness.BIN_DIR.rstrip("/") + "/")
        (tmp_path / f"{name}.service").write_text(text)
    for b in ("s3-crypt-proxy", "memkey-server"):
        harness.binary(b)
    files = [str(tmp_path / f"{n}.service") for n in sorted(UNITS)]
    r = subprocess.run([analyze, "verify", *files], capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    complaints = [line for line in out.splitlines() if ".service" in line]
    assert not complaints, out
    r = subprocess.run([analyze, "security", "--offline=yes", *files], capture_output=True, text=True, timeout=60)
    if r.returncode == 0 or "Overall exposure" in r.stdout:
        for m in re.finditer(r"Overall exposure level for (\S+): ([\d.]+)", r.stdout):
            assert float(m.group(2)) <= 2.5, f"{m.group(1)} exposure {m.group(2)}"


# ---------------------------------------------------------------- scripts

def test_shellcheck_passes_on_the_scripts():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: scripts/bootstrap.sh installs it"
    r = subprocess.run([shellcheck, "-x", *SCRIPTS], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if not script.endswith("lib.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"


def guard_path(tmp_path):
    """A PATH whose system-changing commands only record that they were called."""
    guard = tmp_path / "guard"
    guard.mkdir()
    record = tmp_path / "called"
    for cmd in ("apt-get", "systemctl", "useradd", "groupadd", "usermod", "install", "cargo", "rustup",
                "curl", "runuser", "openssl", "mv", "cp", "rm", "chown", "chmod", "mkdir", "kill"):
        p = guard / cmd
        p.write_text(f"#!/bin/sh\necho \"{cmd} $*\" >> '{record}'\nexit 1\n")
        p.chmod(0o755)
    return f"{guard}:{os.environ['PATH']}", record


@pytest.mark.parametrize("script", ["deploy.sh", "update.sh", "s3-crypt-proxy-reload"])
def test_help_prints_usage_and_touches_nothing(tmp_path, script):
    path, record = guard_path(tmp_path)
    for flag in ("--help", "-h"):
        r = subprocess.run([os.path.join(DEPLOY, script), flag], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PATH=path), stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage:"), r.stdout
        assert not record.exists(), record.read_text()
    r = subprocess.run([os.path.join(DEPLOY, script), "--no-such-option"], capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, PATH=path), stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert not record.exists(), record.read_text()


def test_help_texts_document_the_options():
    def help_of(s):
        return subprocess.run([os.path.join(DEPLOY, s), "--help"], capture_output=True, text=True).stdout
    d, u = help_of("deploy.sh"), help_of("update.sh")
    for opt in ("--non-interactive", "--env-file", "--skip-build", "--overwrite", "S3CP_BACKEND_ENDPOINT",
                "S3CP_ALLOWED_BUCKETS", "MEMKEY_ADMINS"):
        assert opt in d, opt
    for opt in ("--skip-build", "--skip-key", "--force", "systemctl reload s3-crypt-proxy"):
        assert opt in u, opt


# ---------------------------------------------------------------- container and Kubernetes

def test_containerfile_recipe():
    text = open(os.path.join(DEPLOY, "container", "Containerfile")).read()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(froms) >= 3, froms
    assert "rust:1.95-bookworm" in text and "debian:bookworm-slim" in text
    assert re.search(r"apt-get install[^\n]*cmake", text)
    stages = {alias for _, alias in froms}
    assert {"builder", "s3-crypt-proxy", "memkey-server"} <= stages
    for target in ("s3-crypt-proxy", "memkey-server"):
        body = text.split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001(:10001)?$", body, re.M), target
        assert "HEALTHCHECK" in body and "ENTRYPOINT" in body, target
    assert "/healthz" in text
    assert os.path.exists(os.path.join(DEPLOY, "container", "Containerfile.dockerignore"))


def k8s_objects():
    objs = []
    for f in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
        for d in load_all(f):
            objs.append((os.path.basename(f), d))
    return objs


def test_kubernetes_objects_are_consistent():
    objs = {(d["kind"], d.get("metadata", {}).get("name")): d for _, d in k8s_objects()}
    for (kind, name), d in objs.items():
        assert d.get("apiVersion"), (kind, name)
        if kind not in ("Namespace", "Kustomization"):
            assert d["metadata"]["namespace"] == "s3-crypt-proxy", (kind, name)
    dep = objs[("Deployment", "s3-crypt-proxy")]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    containers = {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
    for name, c in containers.items():
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1) != 0, name
        assert c["resources"]["requests"] and c["resources"]["limits"], name
    proxy, memkey = containers["s3-crypt-proxy"], containers["memkey-server"]
    # The key socket: an in-memory emptyDir at /run/memkey in both containers.
    volumes = {v["name"]: v for v in spec["volumes"]}
    shared = [v for v in volumes.values() if v.get("emptyDir", {}).get("medium") == "Memory"
              and all(any(m["name"] == v["name"] and m["mountPath"] == "/run/memkey" for m in c["volumeMounts"])
                      for c in (proxy, memkey))]
    assert shared, "no in-memory emptyDir mounted at /run/memkey in both containers"
    # Probes.
    ports = {p["name"]: p["containerPort"] for c in containers.values() for p in c.get("ports", [])}
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ports[proxy["readinessProbe"]["httpGet"]["port"]] == 9090
    # The example configuration agrees with the manifests.
    secrets_ = {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == "Secret"}
    mounted = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    assert mounted == set(secrets_)
    pcfg = yaml.safe_load(secrets_["s3-crypt-proxy-config"]["stringData"]["config.yaml"])
    mcfg = yaml.safe_load(secrets_["memkey-config"]["stringData"]["memkey.yaml"])
    sock = pcfg["memkey"]["socket_path"]
    assert sock == mcfg["server"]["unix_socket_path"] and sock.startswith("/run/memkey/")
    sock_dir = os.path.dirname(sock)
    if sock_dir != "/run/memkey":  # a private subdirectory, made by an init container
        assert any(sock_dir in " ".join(c.get("command", [])) for c in spec.get("initContainers", []))
    assert int(pcfg["listen_addr"].rsplit(":", 1)[1]) == ports["s3"]
    assert int(pcfg["admin_listen_addr"].rsplit(":", 1)[1]) == ports["admin"]
    assert int(mcfg["server"]["listen_addr"].rsplit(":", 1)[1]) == ports["memkey"]
    assert not pcfg["admin_listen_addr"].startswith("127.") and not mcfg["server"]["listen_addr"].startswith("127.")
    for (kind, name), d in objs.items():
        if kind == "Service":
            assert d["spec"]["selector"].items() <= labels.items(), name
            for p in d["spec"]["ports"]:
                assert p["targetPort"] in ports, (name, p)
        if kind in ("NetworkPolicy", "PodDisruptionBudget"):
            sel = d["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]["matchLabels"]
            assert sel.items() <= labels.items(), (kind, name)
    assert objs[("Service", "s3-crypt-proxy-memkey")]["spec"]["publishNotReadyAddresses"] is True
    np = objs[("NetworkPolicy", "s3-crypt-proxy")]["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}
    in_ports = {p["port"] for rule in np["ingress"] for p in rule["ports"]}
    assert in_ports == {8080, 9090, 7070}
    out_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in np["egress"] for p in rule["ports"]}
    assert ("UDP", 53) in out_ports and ("TCP", 443) in out_ports
    memkey_rule = [r for r in np["ingress"] if any(p["port"] == 7070 for p in r["ports"])][0]
    assert all("ipBlock" in peer for peer in memkey_rule["from"]), "memkey-server only from the admin network"
    text = open(os.path.join(DEPLOY, "k8s", "deployment.yaml")).read()
    assert "every pod" in text.lower() and "--server" in text, "the key delivery note"


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: scripts/bootstrap.sh installs Debian's kubernetes-client"
    r = subprocess.run([kubectl, "kustomize", os.path.join(DEPLOY, "k8s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == sorted(["Namespace", "Deployment", "Service", "Service", "NetworkPolicy", "PodDisruptionBudget"])


# ---------------------------------------------------------------- the flows, for real

def bash_with_deploy(script, env=None, timeout=120):
    """Runs bash code with deploy/deploy.sh sourced (functions only)."""
    full = f"set -euo pipefail\n. {shlex.quote(os.path.join(DEPLOY, 'deploy.sh'))}\n{script}"
    r = subprocess.run(["bash", "-c", full], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def https_get(url, timeout=5):
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def read_pid(path):
    try:
        return int(open(path).read().strip())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def unit_command(key, mapping):
    line = dict(unit_directives(UNITS["s3-crypt-proxy"])["Service"])[key]
    for old in sorted(mapping, key=len, reverse=True):
        line = line.replace(old, mapping[old])
    return shlex.split(line)


@pytest.fixture
def flow(tmp_path):
    """Configurations rendered by deploy.sh's own functions, memkey-server started from its
    configuration with a key delivered by memkey-admin, a moto backend."""
    d = tmp_path
    procs, pids = [], []
    backend = harness.start_backend("moto", str(d))
    procs.append(backend)
    direct = boto3.client("s3", endpoint_url=backend.endpoint, region_name=backend.region,
                          aws_access_key_id=backend.access_key, aws_secret_access_key=backend.secret_key)
    direct.create_bucket(Bucket="pbs-deploy")
    bins = os.path.abspath(harness.BIN_DIR)
    gen = subprocess.run([harness.binary("memkey-server"), "--generate-identity"], capture_output=True, text=True, check=True)
    seed = gen.stdout.strip()
    fingerprint = re.search(r"SERVER FINGERPRINT:\s*([0-9a-f]{64})", gen.stderr).group(1)
    admin_dir = d / "admin"
    memkey_port, port, admin_port = harness.free_port(), harness.free_port(), harness.free_port()

    def admin(*args):
        return subprocess.run([harness.binary("memkey-admin"), "--config-dir", str(admin_dir), *args],
                              capture_output=True, text=True, timeout=60)

    r = admin("init", "--server", f"https://127.0.0.1:{memkey_port}", "--fingerprint", fingerprint)
    assert r.returncode == 0, r.stderr
    admin_pub = admin("identity").stdout.strip()
    run_dir = d / "memkey-run"
    run_dir.mkdir(mode=0o750)
    run_dir.chmod(0o750)
    env = {
        "D": str(d), "BINS": bins, "SEED": seed,
        "S3CP_LISTEN_ADDR": f"127.0.0.1:{port}", "S3CP_ADMIN_LISTEN_ADDR": f"127.0.0.1:{admin_port}",
        "S3CP_BACKEND_ENDPOINT": backend.endpoint, "S3CP_BACKEND_REGION": backend.region,
        "S3CP_BACKEND_ACCESS_KEY": backend.access_key, "S3CP_BACKEND_SECRET_KEY": backend.secret_key,
        "S3CP_BACKEND_PATH_STYLE": "true", "S3CP_ALLOWED_BUCKETS": "pbs-deploy,second-bucket",
        "S3CP_CONDITIONAL_WRITES": "backend", "S3CP_CLIENT_ACCESS_KEY": "S3CPTESTKEY",
        "S3CP_CLIENT_SECRET_KEY": secrets.token_hex(20), "S3CP_ADMIN_TOKEN": secrets.token_hex(32),
        "MEMKEY_LISTEN_ADDR": f"127.0.0.1:{memkey_port}", "MEMKEY_ADMINS": admin_pub,
        "S3CP_PUBLIC_IP": "127.0.0.1",
    }
    out = bash_with_deploy("""
        PROXY_CERT=$D/proxy.crt PROXY_KEY=$D/proxy.key MEMKEY_CERT=$D/memkey.crt MEMKEY_KEY=$D/memkey.key
        MEMKEY_SOCKET=$D/memkey-run/memkey.sock PROXY_PID_FILE=$D/proxy.pid PROXY_UPGRADE_SOCK=$D/upgrade.sock
        MEMKEY_CONFIG=$D/memkey.yaml BIN_PREFIX=$BINS
        gen_cert "$PROXY_CERT" "$PROXY_KEY" localhost 127.0.0.1
        gen_cert "$MEMKEY_CERT" "$MEMKEY_KEY" localhost 127.0.0.1
        render_proxy_config > "$D/config.yaml"
        render_memkey_config "$SEED" > "$D/memkey.yaml"
        echo "fingerprint=$(memkey_fingerprint)"
    """, env)
    # The fingerprint deploy.sh prints is the server's.
    assert f"fingerprint={fingerprint}" in out
    # Short drain times, so that the old process of a reload leaves within the test.
    cfg = (d / "config.yaml").read_text()
    cfg = cfg.replace("grace_period_seconds: 30", "grace_period_seconds: 1")
    cfg = cfg.replace("graceful_shutdown_timeout_seconds: 30", "graceful_shutdown_timeout_seconds: 2")
    (d / "config.yaml").write_text(cfg)
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("S3CP_", "MEMKEY_"))}
    for args in ([harness.binary("s3-crypt-proxy"), "check", "--config", str(d / "config.yaml")],
                 [harness.binary("memkey-server"), "--config", str(d / "memkey.yaml"), "--check-config"]):
        r = subprocess.run(args, capture_output=True, text=True, env=clean_env, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    keyd = harness.Proc([harness.binary("memkey-server"), "--config", str(d / "memkey.yaml")], str(d), "memkey-server", env=clean_env)
    procs.append(keyd)
    harness.wait_port(memkey_port, keyd.p)
    key_file = d / "master.key"
    assert admin("key", "generate", "--out", str(key_file)).returncode == 0
    # The self-signed certificate deploy.sh makes is accepted by memkey-admin's TLS client.
    r = admin("key", "send", "--key-file", str(key_file), "--cacert", str(d / "memkey.crt"))
    assert r.returncode == 0, r.stdout + r.stderr
    state = {"dir": d, "port": port, "admin_port": admin_port, "env": env, "clean_env": clean_env, "pids": pids}
    try:
        yield state
    finally:
        for pid in set(pids + [read_pid(d / "proxy.pid")]):
            if pid and alive(pid):
                os.kill(pid, signal.SIGINT)
        deadline = time.time() + 10
        while time.time() < deadline and any(p and alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        for p in reversed(procs):
            p.stop()


def start_like_the_unit(flow):
    d = flow["dir"]
    mapping = {"/usr/local/bin/": os.path.abspath(harness.BIN_DIR) + "/",
               "/etc/s3-crypt-proxy/config.yaml": str(d / "config.yaml")}
    args = unit_command("ExecStart", mapping)
    with open(d / "proxy.log", "ab") as log:
        r = subprocess.run(args, stdout=log, stderr=log, env=flow["clean_env"], timeout=60)
    assert r.returncode == 0, harness.tail(str(d / "proxy.log"))
    deadline = time.time() + 10
    while read_pid(d / "proxy.pid") is None and time.time() < deadline:
        time.sleep(0.05)
    pid = read_pid(d / "proxy.pid")
    assert pid and alive(pid), harness.tail(str(d / "proxy.log"))
    flow["pids"].append(pid)
    return pid


def reload_like_the_unit(flow, main_pid):
    d = flow["dir"]
    mapping = {"/usr/local/bin/s3-crypt-proxy-reload": os.path.join(DEPLOY, "s3-crypt-proxy-reload"),
               "/usr/local/bin/": os.path.abspath(harness.BIN_DIR) + "/",
               "/etc/s3-crypt-proxy/config.yaml": str(d / "config.yaml"),
               "/run/s3-crypt-proxy/proxy.pid": str(d / "proxy.pid"),
               "/run/s3-crypt-proxy/upgrade.sock": str(d / "upgrade.sock"),
               "$MAINPID": str(main_pid)}
    args = unit_command("ExecReload", mapping)
    with open(d / "reload.log", "ab") as log:
        return subprocess.run(args, stdout=log, stderr=log, env=flow["clean_env"], timeout=90)


def wait_ready(flow, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = https_get(f"https://127.0.0.1:{flow['admin_port']}/readyz")
        if status == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"not ready: {body!r}\n{harness.tail(str(flow['dir'] / 'proxy.log'))}")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_rendered_configuration_serves_and_reloads_without_a_failed_request(flow):
    d = flow["dir"]
    first = start_like_the_unit(flow)
    wait_ready(flow)
    # PBS's fingerprint of the deployed certificate.
    r = subprocess.run([harness.binary("s3-crypt-proxy"), "fingerprint", "--config", str(d / "config.yaml")],
                       capture_output=True, text=True, env=flow["clean_env"], timeout=30)
    assert r.stdout.strip() == harness.cert_fingerprint(str(d / "proxy.crt"))

    s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{flow['port']}", region_name="us-east-1", verify=False,
                      aws_access_key_id=flow["env"]["S3CP_CLIENT_ACCESS_KEY"],
                      aws_secret_access_key=flow["env"]["S3CP_CLIENT_SECRET_KEY"],
                      config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "errors": []}

    def loop(worker):
        i = 0
        while not stop.is_set():
            body = os.urandom(500 + (i * 7919) % 150_000)
            key = f"reload/{worker}/{i % 10}"
            try:
                s3.put_object(Bucket="pbs-deploy", Key=key, Body=body)
                assert s3.get_object(Bucket="pbs-deploy", Key=key)["Body"].read() == body
                stats["ok"] += 1
            except Exception as e:  # counted; the assertion below shows them
                stats["failed"] += 1
                stats["errors"].append(repr(e)[:300])
            i += 1

    workers = [threading.Thread(target=loop, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.5)
        # A broken configuration is refused before the running process is touched.
        good = (d / "config.yaml").read_text()
        (d / "config.yaml").write_text(good + "\nfilters: [allowlist, sigv4]\n")
        r = reload_like_the_unit(flow, first)
        assert r.returncode != 0
        assert read_pid(d / "proxy.pid") == first and alive(first)
        (d / "config.yaml").write_text(good)

        before = stats["ok"]
        r = reload_like_the_unit(flow, first)
        assert r.returncode == 0, harness.tail(str(d / "reload.log"))
        second = read_pid(d / "proxy.pid")
        flow["pids"].append(second)
        assert second != first and alive(second)
        # The old process drains and leaves (5 s hand-over pause, 1 s grace, 2 s shutdown).
        deadline = time.time() + 30
        while alive(first) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(first), "the old process did not exit after draining"
        time.sleep(1.5)
        after = stats["ok"]
        # And a second reload, from the new main PID, as systemd would pass it.
        r = reload_like_the_unit(flow, second)
        assert r.returncode == 0, harness.tail(str(d / "reload.log"))
        third = read_pid(d / "proxy.pid")
        flow["pids"].append(third)
        assert third not in (first, second) and alive(third)
        time.sleep(1.5)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert stats["failed"] == 0, stats["errors"][:5]
    assert after > before and stats["ok"] > after, stats
    # Until the draining process leaves, both accept on the shared sockets (pingora keeps
    # accepting for 5 s after the hand-over); metrics are per process, so wait for that.
    deadline = time.time() + 30
    while alive(second) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(second)
    wait_ready(flow)

    # The metric names the alerts and the dashboard rely on are the ones the proxy exports.
    bad = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{flow['port']}", region_name="us-east-1", verify=False,
                       aws_access_key_id=flow["env"]["S3CP_CLIENT_ACCESS_KEY"], aws_secret_access_key="wrong",
                       config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(Exception):
        bad.head_bucket(Bucket="pbs-deploy")
    s3.put_object(Bucket="pbs-deploy", Key="metrics", Body=b"x" * 1000)
    _, text = https_get(f"https://127.0.0.1:{flow['admin_port']}/metrics")
    families = set(re.findall(r"^# TYPE (s3_crypt_proxy_\w+) ", text.decode(), re.M))
    assert families <= set(EXPORTED), sorted(families - set(EXPORTED))
    always = set(EXPORTED) - {"s3_crypt_proxy_encryption_errors_total", "s3_crypt_proxy_backend_errors_total",
                              "s3_crypt_proxy_read_plans_total"}
    assert always <= families, sorted(always - families)


# ---------------------------------------------------------------- deploy.sh / update.sh end to end

FAKE_SYSTEMCTL = """#!/bin/bash
# Stands in for systemctl: records the call; is-active answers from $FAKE_ACTIVE.
echo "$*" >> "$FAKE_LOG"
case $1 in
  is-active) for u in $FAKE_ACTIVE; do [ "${@: -1}" = "$u" ] && exit 0; done; exit 3 ;;
  show) echo 0 ;;
esac
exit 0
"""


def namespace_supported():
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


def in_namespace(d, script, env, timeout=300):
    """Runs `script` with private copies of /etc and /usr/local/bin bind-mounted over the
    real ones, in a mount namespace of its own: nothing reaches the machine."""
    inner = f"""set -euo pipefail
mount --bind {shlex.quote(str(d / 'etc'))} /etc
mount --bind {shlex.quote(str(d / 'usr-local-bin'))} /usr/local/bin
test -e /etc/.s3cp-deploy-test || {{ echo "not the private /etc" >&2; exit 99; }}
export PATH={shlex.quote(str(d / 'stubs'))}:$PATH
{script}
"""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", inner],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(not namespace_supported(), reason="needs root and mount namespaces")
def test_deploy_and_update_scripts_end_to_end_in_a_private_namespace(tmp_path):
    d = tmp_path
    subprocess.run(["cp", "-a", "/etc", str(d / "etc")], check=True)
    (d / "etc" / ".s3cp-deploy-test").write_text("")
    (d / "usr-local-bin").mkdir()
    stubs = d / "stubs"
    stubs.mkdir()
    (stubs / "systemctl").write_text(FAKE_SYSTEMCTL)
    for cmd in ("apt-get", "cargo", "rustup"):
        (stubs / cmd).write_text(f"#!/bin/sh\necho \"{cmd} must not run here\" >&2\nexit 1\n")
    for p in stubs.iterdir():
        p.chmod(0o755)
    log = d / "systemctl.log"
    # Stripped copies: the debug binaries are hundreds of MB and get installed twice.
    bins = str(d / "bins")
    os.mkdir(bins)
    for b in ("s3-crypt-proxy", "memkey-server", "memkey-admin"):
        if shutil.which("strip") is None or subprocess.run(["strip", "-o", os.path.join(bins, b), harness.binary(b)]).returncode:
            shutil.copy2(harness.binary(b), os.path.join(bins, b))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3CP_", "MEMKEY_"))}
    env.update({
        "FAKE_LOG": str(log), "FAKE_ACTIVE": "",
        "S3CP_BACKEND_ENDPOINT": "http://127.0.0.1:9", "S3CP_BACKEND_REGION": "eu-test-1",
        "S3CP_BACKEND_ACCESS_KEY": "backend-ak", "S3CP_BACKEND_SECRET_KEY": "backend/secret+key",
        "S3CP_ALLOWED_BUCKETS": "pbs-one,pbs-two", "S3CP_PUBLIC_NAME": "proxy.test", "S3CP_PUBLIC_IP": "192.0.2.10",
    })
    deploy = f"{shlex.quote(os.path.join(DEPLOY, 'deploy.sh'))} --non-interactive --skip-build --bin-dir {shlex.quote(bins)} --no-start"
    report = """
stat -c '%U:%G %a %n' /etc/s3-crypt-proxy /etc/s3-crypt-proxy/config.yaml /etc/s3-crypt-proxy/proxy.crt \
  /etc/s3-crypt-proxy/proxy.key /etc/memkey /etc/memkey/memkey.yaml /etc/memkey/memkey.crt /etc/memkey/memkey.key \
  /usr/local/bin/s3-crypt-proxy /usr/local/bin/memkey-server /usr/local/bin/memkey-admin \
  /usr/local/bin/s3-crypt-proxy-reload /etc/systemd/system/s3-crypt-proxy.service /etc/systemd/system/memkey-server.service
echo "groups: $(id -nG s3cp) | $(id -nG memkey)"
echo "shells: $(getent passwd s3cp | cut -d: -f7) $(getent passwd memkey | cut -d: -f7)"
sha256sum /etc/s3-crypt-proxy/config.yaml /etc/memkey/memkey.yaml
"""
    try:
        deploy_and_update(d, env, bins, deploy, report, log)
    finally:  # the binary copies are large
        for big in ("bins", "usr-local-bin"):
            shutil.rmtree(d / big, ignore_errors=True)


def deploy_and_update(d, env, bins, deploy, report, log):
    r = in_namespace(d, f"{deploy}\necho ===REPORT===\n{report}", env)
    assert r.returncode == 0, r.stdout + r.stderr
    out, report_out = r.stdout.split("===REPORT===")
    # The summary.
    assert re.search(r"SERVER FINGERPRINT:\s+[0-9a-f]{64}", out), out
    assert re.search(r"Fingerprint\s+([0-9a-f]{2}:){31}[0-9a-f]{2}", out), out
    assert re.search(r"Access key\s+S3CP[0-9A-F]{16}", out) and re.search(r"Secret key\s+[0-9a-f]{40}", out), out
    assert "Endpoint       proxy.test" in out and "Port           8080" in out and "Bucket         pbs-one" in out
    assert "memkey-admin init --server https://127.0.0.1:7070" in out and "ssh -N -L 7070:127.0.0.1:7070" in out
    # Owners and modes.
    modes = {line.split()[2]: tuple(line.split()[:2]) for line in report_out.splitlines() if line.startswith(("root", "s3cp", "memkey"))}
    want = {
        "/etc/s3-crypt-proxy": ("root:s3cp", "750"), "/etc/s3-crypt-proxy/config.yaml": ("root:s3cp", "640"),
        "/etc/s3-crypt-proxy/proxy.crt": ("root:root", "644"), "/etc/s3-crypt-proxy/proxy.key": ("root:s3cp", "640"),
        "/etc/memkey": ("root:memkey", "750"), "/etc/memkey/memkey.yaml": ("root:memkey", "640"),
        "/etc/memkey/memkey.crt": ("root:root", "644"), "/etc/memkey/memkey.key": ("root:memkey", "640"),
        "/usr/local/bin/s3-crypt-proxy": ("root:root", "755"), "/usr/local/bin/s3-crypt-proxy-reload": ("root:root", "755"),
        "/etc/systemd/system/s3-crypt-proxy.service": ("root:root", "644"),
    }
    for path, owner_mode in want.items():
        assert modes.get(path) == owner_mode, (path, modes.get(path))
    groups = re.search(r"groups: (.*) \| (.*)", report_out)
    assert "memkey-clients" in groups.group(1).split() and "s3cp" in groups.group(1).split()
    assert "memkey-clients" not in groups.group(2).split()
    assert "shells: /usr/sbin/nologin /usr/sbin/nologin" in report_out
    calls = log.read_text().splitlines()
    assert "daemon-reload" in calls and "enable memkey-server.service s3-crypt-proxy.service" in calls
    assert not any(c.startswith(("start", "restart", "reload")) for c in calls), calls
    sums = re.findall(r"^([0-9a-f]{64})  ", report_out, re.M)

    # The configuration it wrote, read back.
    r = in_namespace(d, "cat /etc/s3-crypt-proxy/config.yaml; echo ===; cat /etc/memkey/memkey.yaml", env)
    proxy_cfg, memkey_cfg = (yaml.safe_load(t) for t in r.stdout.split("\n===\n"))
    assert proxy_cfg["backend"]["secret_key"] == "backend/secret+key" and proxy_cfg["backend"]["path_style"] is False
    assert proxy_cfg["allowed_buckets"] == ["pbs-one", "pbs-two"]
    assert proxy_cfg["memkey"]["socket_path"] == memkey_cfg["server"]["unix_socket_path"] == "/run/memkey/memkey.sock"
    assert proxy_cfg["server"]["pid_file"] == "/run/s3-crypt-proxy/proxy.pid"
    assert memkey_cfg["admins"] == [] and re.fullmatch(r"[0-9a-f]{64}", memkey_cfg["identity"]["private_key"])

    # A second run keeps what is there (fingerprints and credentials stay valid).
    log.write_text("")
    r = in_namespace(d, f"{deploy}\necho ===REPORT===\n{report}", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "keeping /etc/s3-crypt-proxy/config.yaml" in r.stderr
    assert re.findall(r"^([0-9a-f]{64})  ", r.stdout.split("===REPORT===")[1], re.M) == sums

    # A missing proxy configuration is written again next to the kept memkey-server identity.
    r = in_namespace(d, f"rm /etc/s3-crypt-proxy/config.yaml\n{deploy}\necho ===AFTER===\n"
                        "sha256sum /etc/memkey/memkey.yaml; grep -h 'endpoint:' /etc/s3-crypt-proxy/config.yaml; "
                        "ls -A /etc/s3-crypt-proxy /etc/memkey", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote /etc/s3-crypt-proxy/config.yaml" in r.stderr
    after = r.stdout.split("===AFTER===\n")[1]
    assert sums[1] in after, "the memkey-server identity must not change"
    assert 'endpoint: "https://127.0.0.1:7070"' in after
    assert ".new" not in after and ".bak" not in after, after

    # update.sh, nothing changed: no memkey-server restart, a reload of the running proxy.
    update = f"{shlex.quote(os.path.join(DEPLOY, 'update.sh'))} --skip-build --bin-dir {shlex.quote(bins)} --force"
    log.write_text("")
    r = in_namespace(d, update, dict(env, FAKE_ACTIVE="memkey-server.service memkey-server s3-crypt-proxy"))
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    assert "reload s3-crypt-proxy" in calls, calls
    assert not any("restart memkey-server" in c for c in calls), calls

    # update.sh after a memkey-server change, with --skip-key: memkey-server restarts, and the
    # proxy is NOT reloaded while memkey-server holds no key.
    log.write_text("")
    r = in_namespace(d, "printf '#!/bin/sh\\necho memkey-server 0.0.0-old\\n' > /usr/local/bin/memkey-server\n"
                        f"chmod 755 /usr/local/bin/memkey-server\n{update} --skip-key",
                     dict(env, FAKE_ACTIVE="memkey-server s3-crypt-proxy"))
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    assert "restart memkey-server" in calls, calls
    assert "reload s3-crypt-proxy" not in calls, calls
    assert "NOT reloaded" in r.stderr and "memkey-server 0.0.0-old" in r.stderr
