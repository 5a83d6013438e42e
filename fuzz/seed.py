"""Seeds the fuzz corpus from the golden pods: each as a /mutate review, and
its template inside a Deployment review for /validate."""
import glob, json, os, sys, yaml

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "../crates/webhook/tests/golden/*.yaml"))):
    if path.endswith("config.yaml"):
        continue
    try:
        pod = yaml.safe_load(open(path))
    except yaml.YAMLError:
        print(f"seed.py: skipped {path} (PyYAML reads YAML 1.1 only)", file=sys.stderr)
        continue
    name = os.path.basename(path).rsplit(".", 2)[0] + ("-expected" if ".expected." in path else "")
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "namespace": "default", "operation": "CREATE", "object": pod}}
    open(os.path.join(out, name + ".json"), "w").write(json.dumps(review))
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    review["request"]["object"] = {"metadata": {"name": "d"}, "spec": {"template": pod}}
    open(os.path.join(out, name + "-deployment.json"), "w").write(json.dumps(review))
