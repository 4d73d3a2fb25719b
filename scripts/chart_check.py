#!/usr/bin/env python3
"""Renders and lints the Helm chart with Helm's own engine and validates what
it renders against the Kubernetes OpenAPI schemas; tests/it/chart_helm.rs
drives it and judges the answers.

Helm is the PyPI wheel helm-python-sdk (Helm v4's Go SDK through libhelm_c,
no helm binary); the schemas are kubernetes-validate's. Both are installed
into target/services/venv by scripts/tools.sh.

Reads a JSON request on stdin:
  {"chart": DIR, "kube_version": "1.31.0",
   "cases": [{"name": N, "values": {...}, "release": R, "namespace": NS}]}
and prints one JSON answer per case:
  {"name": N, "render_error": null | MESSAGE,
   "lint": {"messages": [{"severity", "path", "error"}], "errors": [...]},
   "objects": [{"template", "apiVersion", "kind", "name", "object",
                "k8s": "ok" | "crd" | "invalid: ..." | "no schema: ..."}]}
Exit 3 (with the reason on stderr) when a wheel is missing.
"""

import json
import sys

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as e:  # the test says whether that is a skip or a failure
    print(f"missing: {e}", file=sys.stderr)
    sys.exit(3)

# API groups of custom resources: validated by their operators' CRDs, which
# kubernetes-validate does not ship.
CRD_GROUPS = ("monitoring.coreos.com/", "monitoring.googleapis.com/", "keda.sh/")


def objects(manifests, kube_version):
    out = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            api = doc.get("apiVersion", "")
            if api.startswith(CRD_GROUPS):
                verdict = "crd"
            else:
                try:
                    kubernetes_validate.validate(doc, kube_version, strict=True)
                    verdict = "ok"
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(p) for p in e.absolute_path)
                    verdict = f"invalid: at {path or '/'}: {e.message}"
                except kubernetes_validate.SchemaNotFoundError as e:
                    verdict = f"no schema: {e.message}"
            out.append(
                {
                    "template": template,
                    "apiVersion": api,
                    "kind": doc.get("kind"),
                    "name": (doc.get("metadata") or {}).get("name"),
                    "object": doc,
                    "k8s": verdict,
                }
            )
    return out


def run(chart_dir, kube_version, case):
    values = case.get("values") or {}
    answer = {"name": case["name"], "render_error": None, "objects": []}
    answer["lint"] = helm.lint(
        chart_dir,
        values,
        strict=True,
        namespace=case.get("namespace", "default"),
        kube_version=f"v{kube_version}",
    )
    # Lint only logs `fail` and `required`: a refusal shows as a render error.
    with helm.Chart.load(chart_dir) as chart:
        try:
            manifests = chart.render(
                values,
                name=case.get("release", "eb"),
                namespace=case.get("namespace", "default"),
                is_install=True,
            )
        except helm.HelmError as e:
            answer["render_error"] = str(e)
            return answer
    answer["objects"] = objects(manifests, kube_version)
    return answer


def main():
    request = json.load(sys.stdin)
    kube = request.get("kube_version", "1.31.0")
    answers = [run(request["chart"], kube, c) for c in request["cases"]]
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
