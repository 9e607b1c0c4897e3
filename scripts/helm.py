#!/usr/bin/env python3
"""A small Helm CLI over helm-sdkpy (a Go build of Helm 4 with a C interface), for berth's tests.

Run it with the Python of the test environment (`scripts/kube-test-env install` puts helm-sdkpy
in it): `$(dirname "$(scripts/kube-test-env kubectl)")/python scripts/helm.py ...`.

    helm.py lint CHART
    helm.py template RELEASE CHART [-n NS] [-f VALUES]... [--set-json JSON]...
    helm.py install RELEASE CHART --kubeconfig KC [-n NS] [-f VALUES]... [--set-json JSON]...
                    [--create-namespace] [--take-ownership]
    helm.py upgrade RELEASE CHART --kubeconfig KC [-n NS] [-f VALUES]... [--set-json JSON]...
                    [--reuse-values] [--take-ownership]
    helm.py uninstall RELEASE --kubeconfig KC [-n NS]
    helm.py values-doc SCHEMA [--doc DOC [--check]]   the values reference of docs/install.md
    helm.py sync-crd                    rewrite charts/berth/templates/crd.yaml from crds/

Values files are YAML or JSON; --set-json takes a JSON object merged over them (like helm's
--set-json, but whole objects). Errors go to stderr with exit status 1; results (rendered
manifests for `template`, release JSON otherwise) go to stdout.

`template` renders with the real engine and no cluster, like `helm template`: helm-sdkpy has no
client-only mode, so the install runs against a throwaway in-process stand-in for the Kubernetes
API on loopback that serves discovery for the kinds the chart uses and records what Helm creates.
Nothing is sent to any cluster.
"""

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _load_values(files, set_jsons):
    values = {}
    for path in files or []:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data = _parse_yaml_or_json(text, path)
        values = _merge(values, data or {})
    for s in set_jsons or []:
        values = _merge(values, json.loads(s))
    return values


def _parse_yaml_or_json(text, path):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml  # noqa: PLC0415  (optional: PyYAML)
    except ImportError:
        sys.exit(f"helm.py: {path} is not JSON and PyYAML is not installed; pass JSON values")
    return yaml.safe_load(text)


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _helm():
    try:
        import helm_sdkpy  # noqa: PLC0415
    except ImportError:
        sys.exit("helm.py: helm-sdkpy is missing: run scripts/kube-test-env install")
    return helm_sdkpy


# --- template: the engine against a stand-in API on loopback -----------------------------------

# Discovery for every kind the chart may render; Helm maps kinds to resources through it.
_GROUPS = {
    "": ("v1", [("namespaces", "Namespace", False), ("serviceaccounts", "ServiceAccount", True),
                ("services", "Service", True), ("secrets", "Secret", True),
                ("configmaps", "ConfigMap", True)]),
    "apps": ("v1", [("deployments", "Deployment", True)]),
    "rbac.authorization.k8s.io": ("v1", [
        ("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True)]),
    "apiextensions.k8s.io": ("v1", [("customresourcedefinitions", "CustomResourceDefinition", False)]),
    "policy": ("v1", [("poddisruptionbudgets", "PodDisruptionBudget", True)]),
    "coordination.k8s.io": ("v1", [("leases", "Lease", True)]),
    "monitoring.coreos.com": ("v1", [("servicemonitors", "ServiceMonitor", True)]),
}


class _StandIn(BaseHTTPRequestHandler):
    created = []  # set per server
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _resources(self, group):
        version, res = _GROUPS[group]
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for n, k, ns in res]}

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                    "serverAddress": "127.0.0.1"}]})
        if path == "/apis":
            groups = []
            for g, (v, _) in _GROUPS.items():
                if g:
                    gv = {"groupVersion": f"{g}/{v}", "version": v}
                    groups.append({"name": g, "versions": [gv], "preferredVersion": gv})
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path == "/api/v1":
            return self._send(200, self._resources(""))
        m = re.fullmatch(r"/apis/([^/]+)/([^/]+)", path)
        if m and m.group(1) in _GROUPS and _GROUPS[m.group(1)][0] == m.group(2):
            return self._send(200, self._resources(m.group(1)))
        # Lists (release history) are empty; single objects do not exist yet.
        last = path.rsplit("/", 1)[-1]
        if any(last == r for _, (_, res) in _GROUPS.items() for r, _, _ in res):
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"})

    def _echo(self, code):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            # Typed clients send protobuf (Helm's own release record, a Secret): answer with a
            # bare object of the same kind; its content does not matter here.
            body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "release"}}
        else:
            with self.lock:
                self.created.append(body)
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", "00000000-0000-0000-0000-000000000000")
        meta.setdefault("resourceVersion", "1")
        return self._send(code, body)

    def do_POST(self):  # noqa: N802
        return self._echo(201)

    def do_PUT(self):  # noqa: N802
        return self._echo(200)


def _render(release, chart, namespace, values):
    """Renders `chart` with the engine against the stand-in; returns the engine's result."""
    helm = _helm()
    created = []
    handler = type("Handler", (_StandIn,), {"created": created})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kc = os.path.join(tmp, "kubeconfig")
            with open(kc, "w", encoding="utf-8") as f:
                f.write(_standin_kubeconfig(server.server_address[1]))
            cfg = helm.Configuration(namespace=namespace, kubeconfig=kc)
            return asyncio.run(helm.Install(cfg).run(
                release, chart, values=values, wait=False, timeout=60))
    finally:
        server.shutdown()


def _template(args, values):
    result = _render(args.release, args.chart, args.namespace, values)
    manifest = result.get("manifest")
    if not manifest:
        sys.exit("helm.py: the engine returned no manifest")
    sys.stdout.write(manifest if manifest.endswith("\n") else manifest + "\n")
    notes = result.get("info", {}).get("notes") if isinstance(result.get("info"), dict) else None
    if args.notes and notes:
        sys.stderr.write(notes)


def _standin_kubeconfig(port):
    return f"""apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster: {{server: "http://127.0.0.1:{port}"}}
users:
- name: standin
  user: {{token: standin}}
contexts:
- name: standin
  context: {{cluster: standin, user: standin}}
current-context: standin
"""


# --- values reference ------------------------------------------------------------------------

def _values_doc(schema_path):
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    rows = []

    def walk(prefix, node):
        for key, sub in node.get("properties", {}).items():
            name = f"{prefix}.{key}" if prefix else key
            if key == "global":
                continue
            if sub.get("type") == "object" and "properties" in sub:
                walk(name, sub)
                continue
            typ = sub.get("type", "")
            if "enum" in sub:
                typ += " (" + " \\| ".join(str(e) for e in sub["enum"]) + ")"
            default = json.dumps(sub.get("default"), separators=(", ", ": "))
            desc = sub.get("description", "").replace("|", "\\|")
            rows.append(f"| `{name}` | {typ} | `{default}` | {desc} |")

    walk("", schema)
    return ("| value | type | default | description |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


BEGIN = "<!-- values:begin (generated by scripts/helm.py values-doc; do not edit) -->\n"
END = "<!-- values:end -->\n"


def _values_doc_cmd(args):
    table = _values_doc(args.schema)
    if not args.doc:
        sys.stdout.write(table)
        return
    with open(args.doc, encoding="utf-8") as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"helm.py: {args.doc} has no {BEGIN.strip()} ... {END.strip()} block")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + table + END + tail
    if args.check:
        if new != doc:
            sys.exit(f"helm.py: the values reference in {args.doc} is stale: run "
                     f"scripts/helm.py values-doc {args.schema} --doc {args.doc}")
        return
    with open(args.doc, "w", encoding="utf-8") as f:
        f.write(new)


# --- the CRD template ------------------------------------------------------------------------

def _sync_crd():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "crds/statefullocalvolume.yaml"), encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    at = next(i for i, l in enumerate(lines) if l.startswith("  name: ")) + 1
    out = (["{{- if .Values.crds.enabled }}\n"] + lines[:at]
           + ['  {{- include "berth.crdMetadata" . | nindent 2 }}\n'] + lines[at:]
           + ["{{- end }}\n"])
    with open(os.path.join(root, "charts/berth/templates/crd.yaml"), "w", encoding="utf-8") as f:
        f.write("".join(out))


# --- main ----------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(prog="helm.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def values_args(sp):
        sp.add_argument("-f", "--values", action="append", default=[])
        sp.add_argument("--set-json", action="append", default=[])
        sp.add_argument("-n", "--namespace", default="default")

    sp = sub.add_parser("lint")
    sp.add_argument("chart")
    sp = sub.add_parser("template")
    sp.add_argument("release")
    sp.add_argument("chart")
    sp.add_argument("--notes", action="store_true", help="print NOTES.txt to stderr")
    values_args(sp)
    for verb in ("install", "upgrade"):
        sp = sub.add_parser(verb)
        sp.add_argument("release")
        sp.add_argument("chart")
        sp.add_argument("--kubeconfig", required=True)
        sp.add_argument("--take-ownership", action="store_true")
        sp.add_argument("--timeout", type=int, default=120)
        values_args(sp)
        if verb == "install":
            sp.add_argument("--create-namespace", action="store_true")
        else:
            sp.add_argument("--reuse-values", action="store_true")
    sp = sub.add_parser("uninstall")
    sp.add_argument("release")
    sp.add_argument("--kubeconfig", required=True)
    sp.add_argument("-n", "--namespace", default="default")
    sp = sub.add_parser("values-doc")
    sp.add_argument("schema")
    sp.add_argument("--doc", help="rewrite the generated block of this Markdown file")
    sp.add_argument("--check", action="store_true", help="with --doc: fail if it is stale")
    sub.add_parser("sync-crd")
    args = p.parse_args()

    if args.cmd == "sync-crd":
        return _sync_crd()
    if args.cmd == "values-doc":
        return _values_doc_cmd(args)
    helm = _helm()
    try:
        if args.cmd == "lint":
            cfg = helm.Configuration()
            result = asyncio.run(helm.Lint(cfg).run(args.chart))
            print(json.dumps(result, indent=2))
            # Severity: 1 info, 2 warning, 3 error (Helm's support.Message).
            bad = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
            if bad or result.get("Errors"):
                # The engine's lint messages carry no text through the C interface: render the
                # chart with its own values to show the error itself.
                detail = ""
                try:
                    _render("lint", args.chart, "default", {})
                except helm.HelmError as e:
                    detail = f"\n{e}"
                where = ", ".join(f"{m.get('Path')} (severity {m.get('Severity')})" for m in bad)
                sys.exit(f"helm.py: lint failed: {where}{detail}")
            return
        values = _load_values(getattr(args, "values", []), getattr(args, "set_json", []))
        if args.cmd == "template":
            return _template(args, values)
        cfg = helm.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
        if args.cmd == "install":
            result = asyncio.run(helm.Install(cfg).run(
                args.release, args.chart, values=values, create_namespace=args.create_namespace,
                wait=False, timeout=args.timeout, take_ownership=args.take_ownership))
        elif args.cmd == "upgrade":
            result = asyncio.run(helm.Upgrade(cfg).run(
                args.release, args.chart, values=values, wait=False, timeout=args.timeout,
                reuse_values=args.reuse_values, take_ownership=args.take_ownership))
        else:
            result = asyncio.run(helm.Uninstall(cfg).run(args.release, wait=False, timeout=120))
        print(json.dumps(result, indent=2, default=str))
    except helm.HelmError as e:
        sys.exit(f"helm.py: {args.cmd} failed: {e}")


if __name__ == "__main__":
    main()
