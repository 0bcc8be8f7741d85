"""Packaging against the code it ships: the man pages cover every key of
shim/config_keys.c's table, every command-line option and every field of the
log line, and render without a warning; `make install` stages the right
files (never touching a real conf.d); the systemd unit passes
`systemd-analyze verify`; the example configurations, the Kubernetes
ConfigMap's included, pass `mailshim -t`; the manifests pass yamllint;
the Dockerfile's runtime stage names only runtime packages of Debian 12
and runs as a non-root user, and its health check works against a real
HTTP listener; `make run` builds after installing what a fresh machine
lacks."""

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG_C = ROOT / "shim" / "config_keys.c"
MAN8 = ROOT / "man" / "mailshim.8"
MAN5 = ROOT / "man" / "mailshim.conf.5"
UNIT = ROOT / "packaging" / "mailshim.service"
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"

# What the runtime stage may install, and what it must: the libraries
# mailshim links, the CA bundle and, for DNSSEC, libunbound and the root key;
# libidn2 for internationalized domains.
RUNTIME_PACKAGES = {"android-libboringssl", "libev4", "ca-certificates", "libunbound8",
                    "libidn2-0", "dns-root-data"}

# In debian:12-slim already: the C library and what apt itself links.
SLIM_BASE = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}

# (tool, Debian package): tests/deps.sh installs them.
TOOLS = [("man", "man-db"), ("groff", "groff-base"), ("systemd-analyze", "systemd"),
         ("yamllint", "yamllint"), ("apt-cache", "apt"), ("make", "make"),
         ("readelf", "binutils")]

UNSUPPORTED = "is not supported in this build"


@pytest.fixture(scope="module", autouse=True)
def tools_present():
    gone = ["%s (package %s)" % (t, p) for t, p in TOOLS if shutil.which(t) is None]
    if importlib.util.find_spec("yaml") is None:
        gone.append("python yaml (package python3-yaml)")
    if gone:
        pytest.fail("missing: %s; run sh tests/deps.sh as root" % ", ".join(gone),
                    pytrace=False)


def yaml_docs(path):
    import yaml
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def run(argv, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


def clean_env(**extra):
    # `make test` runs this suite from make: a child make must not inherit
    # the outer one's jobserver, nor `make test SAN=1`'s SAN (make exports
    # a command line's variables), which would build elsewhere.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SAN")}
    env.update(extra)
    return env


# --------------------------------------------------------------------------
# What the code says


def table_keys():
    """{key: 'G' or 'S'} from the one key table of shim/config_keys.c."""
    text = CONFIG_C.read_text()
    keys = dict(re.findall(r'KEY\("([a-z0-9_]+)",\s*\w+\),\s*([GS])\(', text))
    names = re.findall(r'KEY\("([a-z0-9_]+)"', text)
    assert len(names) > 20 and set(names) == set(keys), \
        "cannot read the key table of shim/config_keys.c"
    return keys


def log_fields():
    """The key=value fields of the per-connection log line, from conn_log.c."""
    text = (ROOT / "shim" / "conn_log.c").read_text()
    m = re.search(r'void log_session\(.*?\n}\n', text, re.S)
    assert m, "no log_session in shim/conn_log.c"
    fields = re.findall(r'([a-z_]+)=(?:%|\\")', m.group(0))
    assert "conn" in fields and "result" in fields and "reason" in fields, fields
    return fields


def options():
    """The option letters of main.c's getopt string."""
    m = re.search(r'getopt\(argc, argv, "([^"]+)"\)', (ROOT / "shim" / "main.c").read_text())
    assert m, "no getopt call in shim/main.c"
    return [c for c in m.group(1) if c != ":"]


# --------------------------------------------------------------------------
# Man pages


def tag_names(tag):
    """The bold words of a .TP tag line: `.BR a ", " b` -> [a, b];
    `.BI "workers = " n` -> [workers]; `.B \\-t` -> [-t]."""
    m = re.match(r"\.(B|BI|BR) +(.*)$", tag)
    if not m:
        return []
    parts = [p.replace("\\-", "-") for p in shlex.split(m.group(2).replace("\\", "\\\\"))]
    bold = parts[0::2] if m.group(1) != "B" else [" ".join(parts)]
    return [w for b in bold for w in b.split()[:1] if re.match(r"^[A-Za-z0-9_-]+$", w)]


def man_items(path):
    """[(section, [names], body)] of every .TP item with a bold tag."""
    items, section = [], None
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            section = line[4:].strip('"')
        if line != ".TP" or i + 1 >= len(lines):
            continue
        names = tag_names(lines[i + 1])
        if not names:
            continue
        body = []
        for nxt in lines[i + 2:]:
            if nxt in (".TP", ".PP") or nxt.startswith((".SH", ".SS")):
                break
            body.append(nxt)
        items.append((section, names, "\n".join(body)))
    return items


def documented(path, section):
    return {n for s, names, _ in man_items(path) if s == section for n in names}


def key_bodies():
    return {names[0]: b for _, names, b in man_items(MAN5)}


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page):
    r = run(["man", "--warnings", "-l", "-Tutf8", page], env=clean_env(MANWIDTH="80"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "man --warnings complains about %s:\n%s" % (page.name, r.stderr)
    text = re.sub(".\b", "", r.stdout)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert re.search(r"^%s$" % section, text, re.M), "%s has no %s" % (page.name, section)


def test_every_config_key_is_documented_in_its_section():
    keys = table_keys()
    items = [(s, names[0], b) for s, names, b in man_items(MAN5)
             if s in ("GLOBAL KEYS", "SERVICE KEYS")]
    docs = {n: (s, b) for s, n, b in items}
    missing = sorted(set(keys) - set(docs))
    assert not missing, "keys of shim/config_keys.c missing from mailshim.conf.5: %s" % missing
    stale = sorted(set(docs) - set(keys))
    assert not stale, "mailshim.conf.5 documents keys the table lacks: %s" % stale
    assert len(items) == len(docs), "a key is documented twice"
    for name, scope in keys.items():
        section, body = docs[name]
        want = "GLOBAL KEYS" if scope == "G" else "SERVICE KEYS"
        assert section == want, "%s is a %s key but documented under %s" % (name, want, section)
        assert "Default:" in body or "Required" in body, \
            "mailshim.conf.5 gives no default for %s" % name


def table_defaults():
    """{key: default} of the rows of the key table that have one."""
    text = CONFIG_C.read_text()
    macros = dict(re.findall(r'#define (\w+) "([^"]*)"', text))
    table = text[text.index("const struct key config_keys["):]
    table = table[table.index("{"):table.index("\n};")]
    out = {}
    for row in table.split("[K_")[1:]:
        name = re.search(r'KEY\("([a-z0-9_]+)"', row).group(1)
        m = re.search(r'\.def = (?:"([^"]*)"|(\w+))', row)
        if m:
            out[name] = m.group(1) if m.group(1) is not None else macros[m.group(2)]
    return out


def test_defaults_in_the_man_page_match_the_table():
    defaults = table_defaults()
    bodies = key_bodies()
    assert len(defaults) > 10
    for name, value in defaults.items():
        m = re.search(r"Default:\s*\n?\.[BI]R? +(\S+)", bodies[name])
        assert m, "no default value for %s in mailshim.conf.5" % name
        shown = m.group(1).strip('"').replace("\\-", "-")
        assert shown == value, "%s: the table says %s, the man page %s" % (name, value, shown)


def test_unsupported_settings_are_what_the_build_refuses(tmp_path, mailshim_path):
    """A setting the man page calls unsupported is refused by -t, and one it
    does not is accepted: the page follows the build as features land."""
    probes = {"metrics": ("global", "metrics = 127.0.0.1:9465"),
              "upstream_verify": ("service", "upstream_tls = starttls\nupstream_verify = dane"),
              "upstream_xclient": ("service", "upstream_xclient = yes")}
    bodies = key_bodies()
    for name, (where, lines) in probes.items():
        d = tmp_path / name
        d.mkdir()
        g = lines if where == "global" else ""
        s = lines if where == "service" else ""
        # A host name: DANE needs one (an address is refused for that).
        (d / "a.conf").write_text("[global]\n%s\n[s]\nlisten = 127.0.0.1:20001\n"
                                  "upstream = mail.example.org:20002\n%s\n" % (g, s))
        r = run([mailshim_path, "-t", "-c", d])
        refused = UNSUPPORTED in r.stderr
        assert refused == (r.returncode == 1), r.stderr
        says = UNSUPPORTED.replace("is n", "n") in " ".join(bodies[name].split()).lower()
        assert says == refused, "%s: the build %s it, the man page says %s" % (
            name, "refuses" if refused else "accepts",
            "unsupported" if says else "nothing of it")


def test_mailshim8_covers_options_signals_log_fields_and_exit_status():
    text = MAN8.read_text()
    opts = documented(MAN8, "OPTIONS")
    for letter in options():
        assert "-" + letter in opts, "option -%s is not documented in mailshim.8" % letter
    for sig in ("SIGHUP", "SIGTERM", "SIGINT"):
        assert sig in documented(MAN8, "SIGNALS"), "%s is not documented in mailshim.8" % sig
    fields = documented(MAN8, "LOG")
    for f in log_fields():
        assert f in fields, "log field %s is not documented in mailshim.8" % f
    assert {"0", "1", "2"} <= documented(MAN8, "EXIT STATUS")
    for section in ("FILES", "EXIT STATUS", "SIGNALS", "LOG"):
        assert ".SH " + section in text


# --------------------------------------------------------------------------
# make install


def make_install(destdir, *extra):
    r = run(["make", "-C", ROOT, "--no-print-directory", "install", "DESTDIR=%s" % destdir]
            + list(extra), env=clean_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return sorted(str(p.relative_to(destdir)) for p in Path(destdir).rglob("*")
                  if p.is_file())


def example_confs():
    return sorted(p.name for p in (ROOT / "packaging" / "conf.d.example").glob("*.conf"))


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """`make install DESTDIR=... PREFIX=/usr`, once: (destdir, files)."""
    d = tmp_path_factory.mktemp("destdir")
    return d, make_install(d, "PREFIX=/usr")


def test_make_install_stages_every_file(staged):
    destdir, files = staged
    confs = example_confs()
    assert len(confs) >= 2
    want = sorted(["usr/sbin/mailshim", "usr/share/man/man8/mailshim.8",
                   "usr/share/man/man5/mailshim.conf.5",
                   "usr/lib/systemd/system/mailshim.service"]
                  + ["etc/mailshim/conf.d.example/" + c for c in confs])
    assert files == want
    assert not (destdir / "etc/mailshim/conf.d").exists(), "make install created conf.d"
    assert os.stat(destdir / "usr/sbin/mailshim").st_mode & 0o777 == 0o755
    for f in files:
        if f != "usr/sbin/mailshim":
            assert os.stat(destdir / f).st_mode & 0o777 == 0o644, f
    r = run([destdir / "usr/sbin/mailshim", "-V"])
    assert r.returncode == 0 and "BoringSSL" in r.stdout, r.stdout + r.stderr
    assert (destdir / "usr/share/man/man5/mailshim.conf.5").read_bytes() == MAN5.read_bytes()


def test_make_install_default_prefix_and_an_existing_conf_d(tmp_path):
    conf = tmp_path / "etc/mailshim/conf.d"
    conf.mkdir(parents=True)
    (conf / "site.conf").write_text("# the admin's own\n")
    (tmp_path / "etc/mailshim/conf.d.example").mkdir()
    files = make_install(tmp_path)
    assert "usr/local/sbin/mailshim" in files
    assert "usr/local/lib/systemd/system/mailshim.service" in files
    assert "usr/local/share/man/man8/mailshim.8" in files
    assert sorted(p.name for p in conf.iterdir()) == ["site.conf"]
    assert (conf / "site.conf").read_text() == "# the admin's own\n"
    unit = (tmp_path / "usr/local/lib/systemd/system/mailshim.service").read_text()
    execs = re.findall(r"^Exec\w+=(\S+)", unit, re.M)
    assert execs and all(e in ("/usr/local/sbin/mailshim", "/bin/kill") for e in execs), execs
    assert "/usr/local/sbin/mailshim -t -c /etc/mailshim/conf.d" in unit


def test_installed_example_conf_passes_check(staged, tmp_path, pki):
    """The example, with only its certificate paths moved to test files."""
    destdir, _ = staged
    d = tmp_path / "conf.d"
    shutil.copytree(destdir / "etc/mailshim/conf.d.example", d)
    shutil.copy(pki.server, tmp_path / "mail.pem")
    shutil.copy(pki.server_key, tmp_path / "mail.key")
    for f in d.iterdir():
        text = f.read_text().replace("/etc/mailshim/", str(tmp_path) + "/")
        # The package's user does not exist on a test machine.
        f.write_text(re.sub(r"(?m)^user(\s*)= mailshim$", r"user\1= nobody", text))
    r = run([destdir / "usr/sbin/mailshim", "-t", "-c", d])
    assert r.returncode == 0, r.stderr
    assert "configuration OK (%d services)" % (len(example_confs()) - 1) in r.stdout


# --------------------------------------------------------------------------
# systemd


def unit_directives(text):
    """{key: [values]} of the [Service] section, repeated keys kept."""
    out = {}
    section = None
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        k, _, v = line.partition("=")
        out.setdefault((section, k), []).append(v)
    return out


def test_unit_settings():
    u = unit_directives(UNIT.read_text())

    def one(key, section="[Service]"):
        vals = u.get((section, key))
        assert vals and len(vals) == 1, "%s: %s" % (key, vals)
        return vals[0]

    assert one("Type") in ("simple", "exec")
    assert one("ExecStart") == "/usr/sbin/mailshim -c /etc/mailshim/conf.d"
    assert one("ExecStartPre") == "/usr/sbin/mailshim -t -c /etc/mailshim/conf.d"
    assert "/bin/kill -HUP $MAINPID" in u[("[Service]", "ExecReload")]
    assert one("Restart") == "on-failure"
    # mailshim binds low ports as root and becomes the conf's `user` itself.
    assert ("[Service]", "User") not in u and ("[Service]", "DynamicUser") not in u
    assert set(one("CapabilityBoundingSet").split()) == {
        "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"}
    assert one("AmbientCapabilities") == ""
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert u[("[Service]", "SystemCallFilter")][0] == "@system-service"
    for key, want in [("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                      ("LimitNOFILE", "65536"), ("MemoryDenyWriteExecute", "yes"),
                      ("LockPersonality", "yes"), ("RestrictNamespaces", "yes"),
                      ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                      ("ProtectControlGroups", "yes")]:
        assert one(key) == want, key
    # SIGTERM to the supervisor alone: a worker taking a second SIGTERM
    # closes its sessions at once, with no grace period.
    assert one("KillMode") == "mixed"
    # The grace period must fit before systemd's SIGKILL.
    assert int(one("TimeoutStopSec").rstrip("s")) > 30
    assert one("WantedBy", "[Install]") == "multi-user.target"


def systemd_analyze_usable(tmp_path):
    """systemd-analyze verify works here (no systemd as PID 1 is needed);
    None if it does, else why not."""
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nType=exec\nExecStart=/bin/true\n")
    r = run(["systemd-analyze", "verify", probe], env=clean_env())
    if r.returncode != 0:
        return "systemd-analyze verify fails even on a trivial unit here: " + r.stderr
    return None


def test_unit_passes_systemd_analyze_verify(staged, tmp_path):
    why = systemd_analyze_usable(tmp_path)
    if why:
        pytest.skip(why)
    destdir, _ = staged
    installed = (destdir / "usr/lib/systemd/system/mailshim.service").read_text()
    binary = destdir / "usr/sbin/mailshim"
    # The staged unit, pointed at the staged binary; Documentation= man
    # pages are looked up in the staged tree.
    unit = tmp_path / "mailshim.service"
    unit.write_text(installed.replace("/usr/sbin/mailshim", str(binary)))
    env = clean_env(MANPATH=str(destdir / "usr/share/man"))
    r = run(["systemd-analyze", "verify", unit], env=env)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    # And verify does look: the same unit with a binary that is not there fails.
    bad = tmp_path / "bad" / "mailshim.service"
    bad.parent.mkdir()
    bad.write_text(installed.replace("/usr/sbin/mailshim", str(tmp_path / "nowhere")))
    r = run(["systemd-analyze", "verify", bad], env=env)
    assert r.returncode != 0 and "nowhere" in r.stderr, r.stderr
    r = run(["systemd-analyze", "security", "--offline=yes", unit], env=env)
    m = re.search(r"Overall exposure level for mailshim.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0, r.stdout


# --------------------------------------------------------------------------
# Kubernetes


def manifests():
    """{kind: [documents]} of every YAML file under deploy/."""
    out = {}
    for f in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml_docs(f):
            out.setdefault(doc.get("kind"), []).append(doc)
    return out


def configmap_files():
    (cm,) = manifests()["ConfigMap"]
    assert cm["data"] and all(k.endswith(".conf") for k in cm["data"]), cm["data"].keys()
    return cm["metadata"]["name"], cm["data"]


def test_manifests_pass_yamllint():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 4
    argv = ["yamllint", "-s", "-f", "parsable"]
    if (DEPLOY / ".yamllint").exists():
        argv += ["-c", DEPLOY / ".yamllint"]
    r = run(argv + files)
    assert r.returncode == 0, r.stdout + r.stderr


def render_configmap(directory, tls_dir):
    """Each data key to a file; the certificate paths (and nothing else)
    moved from the Secret's mount to tls_dir."""
    _, data = configmap_files()
    directory.mkdir()
    mount = tls_mount()
    for name, text in data.items():
        (directory / name).write_text(text.replace(mount + "/", str(tls_dir) + "/"))


def mailshim_container():
    (dep,) = manifests()["Deployment"]
    spec = dep["spec"]["template"]["spec"]
    shims = [c for c in spec["containers"] if "mailshim" in c["image"]]
    assert len(shims) == 1 and len(spec["containers"]) == 2, "mailshim and one legacy server"
    return spec, shims[0]


def tls_mount():
    spec, c = mailshim_container()
    (cert,) = [m for m in manifests()["Certificate"]]
    vols = {v["name"]: v for v in spec["volumes"]}
    (m,) = [m for m in c["volumeMounts"]
            if vols[m["name"]].get("secret", {}).get("secretName") == cert["spec"]["secretName"]]
    return m["mountPath"]


def test_configmap_conf_passes_check(tmp_path, pki, mailshim_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    # A kubernetes.io/tls Secret holds tls.crt and tls.key.
    shutil.copy(pki.server, tls / "tls.crt")
    shutil.copy(pki.server_key, tls / "tls.key")
    d = tmp_path / "conf.d"
    render_configmap(d, tls)
    text = "".join(p.read_text() for p in d.iterdir())
    assert "/etc/" not in text, "a path outside the mounts: %s" % text
    r = run([mailshim_path, "-t", "-c", d])
    if r.returncode == 0:
        assert "configuration OK" in r.stdout
        return
    # A build without the metrics listener refuses that one key, and only it.
    errors = [e for e in r.stderr.strip().split("\n") if not e.endswith("configuration has errors")]
    assert errors and all(e.endswith("metrics " + UNSUPPORTED) for e in errors), r.stderr
    for p in d.iterdir():
        p.write_text(re.sub(r"(?m)^\s*metrics\s*=.*$", "", p.read_text()))
    r = run([mailshim_path, "-t", "-c", d])
    assert r.returncode == 0, r.stderr


def conf_values(key):
    _, data = configmap_files()
    return [v.split(";")[0].strip() for text in data.values()
            for k, v in re.findall(r"(?m)^\s*([a-z_]+)\s*=\s*(.*)$", text) if k == key]


def test_pod_probes_mounts_and_service_fit_the_conf():
    spec, c = mailshim_container()
    (metrics,) = conf_values("metrics")
    mport = int(metrics.rsplit(":", 1)[1])
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert named.get(get["port"], get["port"]) == mport, probe
    listen_ports = {int(v.rsplit(":", 1)[1]) for v in conf_values("listen")}
    assert listen_ports | {mport} == set(named.values())
    # The conf.d comes from the ConfigMap, mounted where the image's CMD reads.
    name, _ = configmap_files()
    vols = {v["name"]: v for v in spec["volumes"]}
    (conf,) = [m for m in c["volumeMounts"]
               if vols[m["name"]].get("configMap", {}).get("name") == name]
    assert conf["mountPath"] == "/etc/mailshim/conf.d"
    assert all(v.startswith(tls_mount() + "/")
               for v in conf_values("listen_cert") + conf_values("listen_key"))
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    (svc,) = manifests()["Service"]
    assert svc["spec"]["type"] == "LoadBalancer"
    # The real client address must reach mailshim: kept by the Service, or
    # carried in a PROXY header from the balancers named in proxy_from.
    local = svc["spec"].get("externalTrafficPolicy") == "Local"
    proxied = conf_values("proxy_protocol") and set(conf_values("proxy_protocol")) == {"yes"}
    assert local or (proxied and conf_values("proxy_from"))
    targets = {named.get(p["targetPort"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert targets == listen_ports
    assert {p["port"] for p in svc["spec"]["ports"]} == {25, 465, 587}
    (cert,) = manifests()["Certificate"]
    assert cert["apiVersion"].startswith("cert-manager.io/")


# --------------------------------------------------------------------------
# Dockerfile (no Docker here: what can be checked without building it)


def dockerfile_stages():
    """[(from, [(instruction, argument)])], continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, arg = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append((arg.split()[0], []))
        else:
            assert stages, "an instruction before FROM"
            stages[-1][1].append((instr.upper(), arg.strip()))
    return stages


def apt_packages(instructions):
    pkgs = []
    for instr, arg in instructions:
        if instr != "RUN":
            continue
        for m in re.finditer(r"apt-get install ((?:\s*-\S+)*)((?:\s+[a-z0-9][a-z0-9.+-]+)+)", arg):
            pkgs += m.group(2).split()
    return pkgs


def test_dockerfile_stages_and_user():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build, then runtime"
    assert stages[0][0].startswith("debian:12")
    base, final = stages[-1]
    assert base == "debian:12-slim"
    users = [a for i, a in final if i == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), users
    run_text = " ".join(a for i, a in final if i == "RUN")
    if user.isdigit():
        assert re.search(r"useradd .*--uid %s\b" % user, run_text), "uid %s is never made" % user
    pkgs = apt_packages(final)
    assert set(pkgs) == RUNTIME_PACKAGES, "runtime stage packages: %s" % pkgs
    assert not any(p.endswith("-dev") or p in ("gcc", "make", "clang") for p in pkgs)
    cmd = json.loads([a for i, a in final if i == "CMD"][-1])
    assert cmd == ["mailshim", "-c", "/etc/mailshim/conf.d"]
    exposed = {int(p.split("/")[0]) for i, a in final if i == "EXPOSE" for p in a.split()}
    listen_ports = {int(v.rsplit(":", 1)[1]) for v in conf_values("listen")}
    (metrics,) = conf_values("metrics")
    assert exposed == listen_ports | {int(metrics.rsplit(":", 1)[1])}
    assert [a for i, a in final if i == "HEALTHCHECK"], "no HEALTHCHECK"


def test_dockerfile_packages_exist_in_debian_12():
    osr = Path("/etc/os-release").read_text()
    if 'VERSION_ID="12"' not in osr:
        pytest.skip("apt-cache here does not answer for Debian 12")
    names = sorted({p for _, instrs in dockerfile_stages() for p in apt_packages(instrs)})
    assert len(names) >= 8
    # One look-up for all (apt-cache exits 0 if any one is found).
    r = run(["apt-cache", "show", "--no-all-versions"] + names)
    found = set(re.findall(r"(?m)^Package: (\S+)$", r.stdout))
    missing = sorted(set(names) - found)
    assert not missing, "not in Debian 12 (or apt-get update never ran): %s" % missing


def test_runtime_packages_cover_what_the_binary_links(mailshim_path):
    """Every library mailshim needs directly comes from a runtime package
    of the image, or from a package debian:12-slim always has."""
    r = run(["readelf", "-d", mailshim_path])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", r.stdout)
    assert needed, r.stdout + r.stderr
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", run(["ldd", mailshim_path]).stdout, re.M))
    for lib in needed:
        if lib.startswith("libasan") or lib.startswith("libubsan"):
            continue  # the sanitizer build
        path = resolved.get(lib)
        assert path, "ldd does not resolve %s" % lib
        owner = run(["dpkg", "-S", os.path.realpath(path)])
        if owner.returncode != 0:
            owner = run(["dpkg", "-S", path])
        assert owner.returncode == 0, "no package owns %s" % path
        pkg = owner.stdout.split(":")[0]
        assert pkg in RUNTIME_PACKAGES | SLIM_BASE, \
            "%s (for %s) is not installed by the image" % (pkg, lib)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def healthcheck_argv(port):
    (_, final) = dockerfile_stages()[-1]
    hc = [a for i, a in final if i == "HEALTHCHECK"][-1]
    m = re.search(r"CMD\s+(\[.*\])\s*$", hc)
    assert m, "HEALTHCHECK is not in exec form: %s" % hc
    argv = json.loads(m.group(1))
    (metrics,) = conf_values("metrics")
    mport = metrics.rsplit(":", 1)[1]
    assert any(mport in a for a in argv), "the check does not ask the metrics port"
    return [a.replace(mport, str(port)) for a in argv]


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False)])
def test_healthcheck_command_against_a_real_listener(ports, status, healthy):
    port = ports.get()
    handler = type("H", (_Health,), {"status": status})
    srv = http.server.HTTPServer(("127.0.0.1", port), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        r = run(healthcheck_argv(port), timeout=20)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
    assert (r.returncode == 0) == healthy, r.stdout + r.stderr


def test_healthcheck_command_fails_when_nothing_listens(ports):
    r = run(healthcheck_argv(ports.get()), timeout=20)
    assert r.returncode != 0


def test_dockerfile_build_stage_builds_from_what_it_copies(tmp_path):
    """The build stage's commands, run on exactly the files it COPYs (and
    .dockerignore lets through), yield every file the runtime stage takes."""
    stages = dockerfile_stages()
    build = stages[0][1]
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().split("\n")
               if ln.strip() and not ln.startswith("#")]
    ctx = tmp_path / "src"
    ctx.mkdir()
    for instr, arg in build:
        if instr != "COPY":
            continue
        *srcs, _ = arg.split()
        for src in srcs:
            name = src.rstrip("/")
            assert name not in ignored, "%s is COPYed but .dockerignore drops it" % name
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, ctx / name,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, ctx / name)
    runs = [a for i, a in build if i == "RUN" and "apt-get" not in a]
    assert len(runs) == 1, runs
    out = tmp_path / "out"
    script = runs[0].replace("DESTDIR=/out", "DESTDIR=%s" % out)
    r = run(["sh", "-c", script], cwd=ctx, env=clean_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for instr, arg in stages[-1][1]:
        if instr == "COPY" and arg.startswith("--from=build"):
            src = arg.split()[1]
            assert src.startswith("/out/") and (out / src[len("/out/"):]).exists(), src
    r = run([out / "usr/sbin/mailshim", "-V"])
    assert r.returncode == 0 and "BoringSSL" in r.stdout


def test_make_run_builds_after_installing_on_a_fresh_machine(tmp_path):
    """`make run` on a machine without libev-dev: deps.sh installs it, and
    the build that follows must find the libev.a just installed, not the
    lookup the Makefile made before. Here deps.sh is replaced by a stand-in
    that 'installs' (a marker file) and CC by a wrapper that finds no
    libev.a until the marker exists, as a fresh Debian 12 does."""
    src = tmp_path / "src"
    files = run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    assert "Makefile" in files
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, src / f)
    mark = tmp_path / "installed"
    (src / "tests" / "deps.sh").write_text("touch %s\n" % mark)
    (src / "tests" / "run-demo.sh").write_text("exit 0\n")
    cc = tmp_path / "cc"
    cc.write_text('#!/bin/sh\n'
                  'if [ "$1" = -print-file-name=libev.a ] && [ ! -e %s ]; then\n'
                  '  echo libev.a; exit 0; fi\n'
                  'exec cc "$@"\n' % mark)
    cc.chmod(0o755)
    r = run(["make", "-j2", "run", "CC=%s" % cc], cwd=src, env=clean_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert mark.exists() and (src / "mailshim").exists()
    assert run([src / "mailshim", "-V"]).returncode == 0
