#!/usr/bin/python3
"""tests/examples/run.py: the shipped examples in packaging/examples/, checked for form.

  haproxy.cfg                `haproxy -c`, and what wsechod needs of it: leastconn, the
                             /readyz check on each instance's metrics port, a tunnel
                             timeout above the daemon's ping interval plus pong timeout,
                             FIN timeouts, retries with redispatch, no session killing on
                             DOWN, and a [shutdown] delay (wsechod-instance.toml) longer
                             than HAProxy takes to mark a server DOWN. tests/fleet/run.py
                             runs it for real.
  wsechod-instance.toml      `wsechod --check-config`.
  wsechod-kubernetes.yaml    the Kubernetes API schemas (kubernetes-validate --strict, from
                             PyPI, in a venv under ${XDG_CACHE_HOME:-~/.cache}/wsechod; no
                             cluster), and: its wsechod.toml passes --check-config, the
                             probes use /readyz and /healthz on the metrics port the config
                             binds on 0.0.0.0, ports and labels line up, and
                             terminationGracePeriodSeconds covers delay + drain_timeout +
                             the daemon's abort grace and margin. Never run.

Needs target/release/wsechod (cargo build --release) and Debian's haproxy. Last line:
"examples: N passed, N failed" (one per check).
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EX = os.path.join(ROOT, "packaging/examples")
WSECHOD = os.path.join(ROOT, "target/release/wsechod")
K8S_VALIDATE = "kubernetes-validate==1.37.0"
K8S_VERSION = "1.37.0"  # the newest whose schemas that release ships
VENV = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                    "wsechod", "examples-venv")
# What the daemon asks systemd for beyond delay + drain_timeout: ABORT_GRACE (2 s, in
# src/daemon/drain.rs) + STOP_MARGIN (5 s, src/daemon/mod.rs). The pod needs as much.
STOP_EXTRA = 7

passed, failed = [], []


def check(ok, what, detail=""):
    (passed if ok else failed).append(what)
    print(f"{'ok' if ok else 'FAIL'}: {what}{'' if ok or not detail else ': ' + detail}",
          flush=True)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def seconds(d):
    """"3s", "250ms", "2m", "1h" (wsechod and HAProxy durations) in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(d))
    if not m:
        raise ValueError(f"not a duration: {d!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[m.group(2)]


def check_config(toml_text, what):
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml_text)
        f.flush()
        r = run([WSECHOD, "--check-config", "--config", f.name])
    check(r.returncode == 0, f"{what} passes wsechod --check-config", r.stderr.strip())


def defaults():
    """The daemon's defaults, from the shipped etc/wsechod.toml ("#key = value" lines)."""
    out, section = {}, None
    for line in open(os.path.join(ROOT, "etc/wsechod.toml")):
        if m := re.fullmatch(r"\[(\w+)\]\s*", line):
            section = m.group(1)
        elif m := re.fullmatch(r"#(\w+) = (.*)\n", line):
            out.setdefault(section, {})[m.group(1)] = tomllib.loads(f"v = {m.group(2)}")["v"]
    return out


def haproxy():
    path = os.path.join(EX, "haproxy.cfg")
    r = run(["haproxy", "-c", "-f", path])
    check(r.returncode == 0, "haproxy -c accepts haproxy.cfg", (r.stdout + r.stderr).strip())
    text = open(path).read()
    lines = [x.split("#")[0].strip() for x in text.splitlines()]
    lines = [x for x in lines if x]
    backend = lines[lines.index("backend wsechod"):]

    def has(line, where=lines):
        return line in where
    check(has("balance leastconn", backend), "backend: balance leastconn")
    check(has("option httpchk GET /readyz", backend) and
          has("http-check expect status 200", backend), "backend: checks GET /readyz, wants 200")
    check(not any("on-marked-down" in x for x in lines),
          "no on-marked-down (it would cut open WebSockets without a close frame)")
    check(has("retries 3") and any(x.startswith("option redispatch") for x in lines),
          "retries with redispatch")
    check(any(x.startswith("timeout client-fin") for x in lines) and
          any(x.startswith("timeout server-fin") for x in lines), "client-fin and server-fin timeouts")

    def timeout(name):
        m = re.search(rf"^\s*timeout {name} (\S+)$", text, re.M)
        return seconds(m.group(1)) if m else None
    ws = defaults()["websocket"]
    keepalive = seconds(ws["ping_interval"]) + seconds(ws["pong_timeout"])
    tunnel = timeout("tunnel")
    check(tunnel is not None and tunnel > keepalive,
          f"timeout tunnel ({tunnel} s) above ping_interval + pong_timeout ({keepalive} s)")

    inst_path = os.path.join(EX, "wsechod-instance.toml")
    inst_text = open(inst_path).read()
    inst = tomllib.loads(inst_text)
    check_config(inst_text, "wsechod-instance.toml")
    servers = re.findall(r"^\s+server \S+ 127\.0\.0\.1:(\d+) check port (\d+)$", text, re.M)
    ws_port = int(inst["server"]["listen"][0].rsplit(":", 1)[1])
    m_port = int(inst["metrics"]["listen"].rsplit(":", 1)[1])
    want = [(str(ws_port + k), str(m_port + k)) for k in range(3)]
    check(servers == want, "three servers, each checked on its instance's metrics port "
          "(wsechod-instance.toml's ports, +1 per instance)", f"{servers} != {want}")

    d = re.search(r"^\s*default-server (.*)$", text, re.M)
    opts = dict(re.findall(r"(\w+) (\S+)", d.group(1))) if d else {}
    try:
        inter = seconds(opts["inter"])
        fastinter = seconds(opts.get("fastinter", opts["inter"]))
        fall = int(opts["fall"])
        mark_down = inter + (fall - 1) * fastinter + (timeout("check") or inter)
    except (KeyError, ValueError) as e:
        check(False, "default-server sets inter, fastinter, fall", str(e))
        return
    delay = seconds(inst["shutdown"]["delay"])
    check(delay > mark_down, f"[shutdown] delay ({delay} s) above HAProxy's time to mark a "
          f"server DOWN: inter + (fall - 1) x fastinter + timeout check = {mark_down} s")
    check(inst["shutdown"]["close_code"] in (1001, 1012), "instances close with 1001 or 1012 "
          "(clients reconnect at once)")


def k8s_validate(path):
    py = os.path.join(VENV, "bin", "python3")
    tool = os.path.join(VENV, "bin", "kubernetes-validate")
    have = run([py, "-m", "pip", "show", "kubernetes-validate"]) if os.path.exists(py) else None
    if not have or have.returncode != 0 or f"Version: {K8S_VALIDATE.split('==')[1]}" not in have.stdout:
        print(f"installing {K8S_VALIDATE} into {VENV}", flush=True)
        r = run([sys.executable, "-m", "venv", "--clear", VENV])
        if r.returncode == 0:
            r = run([py, "-m", "pip", "install", "-q", K8S_VALIDATE])
        if not check(r.returncode == 0, f"{K8S_VALIDATE} installed", r.stderr.strip()[-2000:]):
            return False
    r = run([tool, "--strict", "--kubernetes-version", K8S_VERSION, path])
    check(r.returncode == 0, f"wsechod-kubernetes.yaml valid for Kubernetes {K8S_VERSION} "
          "(kubernetes-validate --strict)", (r.stdout + r.stderr).strip())
    return True


def k8s_own(path):
    """Runs in the venv's Python (PyYAML comes with kubernetes-validate)."""
    import yaml
    docs = {d["kind"]: d for d in yaml.safe_load_all(open(path)) if d}
    check(set(docs) == {"ConfigMap", "Deployment", "Service"},
          "a ConfigMap, a Deployment and a Service", str(sorted(docs)))
    cm, dep, svc = docs.get("ConfigMap"), docs.get("Deployment"), docs.get("Service")
    if not (cm and dep and svc):
        return
    toml_text = cm["data"]["wsechod.toml"]
    check_config(toml_text, "the ConfigMap's wsechod.toml")
    conf = tomllib.loads(toml_text)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    host, _, mport = conf["metrics"]["listen"].rpartition(":")
    check(host == "0.0.0.0", "metrics listen on 0.0.0.0 (the kubelet probes from the node)")
    check(ports.get("metrics") == int(mport), "containerPort metrics = [metrics] listen port")
    wsport = int(conf["server"]["listen"][0].rpartition(":")[2])
    check(ports.get("ws") == wsport, "containerPort ws = [server] listen port")

    def probe_ok(probe, path):
        g = (probe or {}).get("httpGet", {})
        return g.get("path") == path and g.get("port") in ("metrics", int(mport))
    check(probe_ok(c.get("readinessProbe"), "/readyz"), "readinessProbe: GET /readyz on metrics")
    check(probe_ok(c.get("livenessProbe"), "/healthz"), "livenessProbe: GET /healthz on metrics")
    s = conf["shutdown"]
    delay, drain = seconds(s["delay"]), seconds(s["drain_timeout"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = c.get("lifecycle", {}).get("preStop")
    check(pre is None, "no preStop hook ([shutdown] delay keeps serving while not ready)")
    check(grace >= delay + drain + STOP_EXTRA, f"terminationGracePeriodSeconds ({grace}) >= "
          f"delay + drain_timeout + {STOP_EXTRA} ({delay + drain + STOP_EXTRA:g})")
    rp = c["readinessProbe"]
    unready = rp.get("periodSeconds", 10) * rp.get("failureThreshold", 3)
    check(unready <= delay, f"readiness fails within the delay ({unready} s <= {delay:g} s)")
    check(s["close_code"] in (1001, 1012), "close_code 1001 or 1012")
    args = c.get("args", [])
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
    cfg = args[args.index("--config") + 1] if "--config" in args else "/etc/wsechod/wsechod.toml"
    check(any(vols.get(n) == cm["metadata"]["name"] and cfg == f"{p}/wsechod.toml"
              for n, p in mounts.items()), "--config is the mounted ConfigMap's wsechod.toml")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    check(sel.items() <= labels.items() and svc["spec"]["selector"].items() <= labels.items(),
          "the Deployment's and the Service's selectors match the pod labels")
    check(all(p.get("targetPort") in ("ws", wsport) for p in svc["spec"]["ports"]),
          "the Service targets the ws port")


def main():
    if "--k8s-own" in sys.argv:  # re-run in the venv for PyYAML
        k8s_own(sys.argv[-1])
        print(f"{len(passed)} {len(failed)}")
        return 0
    if not os.access(WSECHOD, os.X_OK):
        print(f"examples: {WSECHOD} missing (cargo build --release)")
        return 1
    haproxy()
    path = os.path.join(EX, "wsechod-kubernetes.yaml")
    if k8s_validate(path):
        r = subprocess.run([os.path.join(VENV, "bin", "python3"), __file__, "--k8s-own", path],
                           capture_output=True, text=True, timeout=120)
        out = r.stdout.strip().splitlines()
        print("\n".join(out[:-1]), flush=True)
        try:
            p, f = map(int, out[-1].split())
        except (IndexError, ValueError):
            p, f = 0, 1
            print(f"FAIL: the Kubernetes checks crashed:\n{r.stderr}")
        passed.extend(["k8s"] * p)
        failed.extend(["k8s"] * f)
    print(f"examples: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
