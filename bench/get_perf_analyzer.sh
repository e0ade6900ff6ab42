#!/usr/bin/env bash
# Triton's perf_analyzer (the C++ load generator) into .cache/perf_analyzer/, for bench/server.py and the
# server tests that drive the server with it.
#
# It comes from the last tritonclient wheel that shipped the binary (2.34.0, Linux x86_64): only the binary is
# taken, the installed tritonclient is left alone. It links libb64 (Debian/Ubuntu package libb64-0d) and
# libcudart.so.12, taken from the nvidia-cuda-runtime-cu12 wheel; no GPU or driver is needed for HTTP over a
# socket. Run: bench/get_perf_analyzer.sh [DEST]; then DEST/perf_analyzer --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/../.cache/perf_analyzer}"
mkdir -p "$dest/bin" "$dest/lib"
dest="$(cd "$dest" && pwd)"

if [ "$(uname -sm)" != "Linux x86_64" ]; then
    echo "perf_analyzer from the tritonclient wheel is Linux x86_64 only; on other hosts build it from" \
         "https://github.com/triton-inference-server/perf_analyzer" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip() { python -m pip --disable-pip-version-check "$@"; }
pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d "$tmp" tritonclient==2.34.0
pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 -d "$tmp" \
    "nvidia-cuda-runtime-cu12>=12.0,<13"
python - "$tmp" "$dest" <<'EOF'
import os, pathlib, sys, zipfile
tmp, dest = map(pathlib.Path, sys.argv[1:])
wanted = {"data/bin/perf_analyzer": dest / "bin" / "perf_analyzer", "lib/libcudart.so.12": dest / "lib" / "libcudart.so.12"}
for wheel in tmp.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            for suffix, target in wanted.items():
                if name.endswith(suffix):
                    part = target.with_suffix(target.suffix + ".part")
                    part.write_bytes(z.read(name))
                    part.chmod(0o755)
                    os.replace(part, target)  # atomic: never a half-written binary
missing = [str(t) for t in wanted.values() if not t.exists()]
if missing:
    sys.exit(f"not found in the downloaded wheels: {missing}")
EOF

if ! ldconfig -p 2>/dev/null | grep -q libb64.so.0d; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -qq libb64-0d >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null)
    else
        echo "install libb64 (libb64.so.0d) with your package manager" >&2
        exit 1
    fi
fi

cat > "$dest/perf_analyzer.part" <<EOF
#!/usr/bin/env bash
LD_LIBRARY_PATH="$dest/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/bin/perf_analyzer" "\$@"
EOF
chmod +x "$dest/perf_analyzer.part"
mv "$dest/perf_analyzer.part" "$dest/perf_analyzer"
usage="$("$dest/perf_analyzer" -h 2>&1 || true)"  # -h prints the usage and exits 1
grep -q "Usage" <<<"$usage" || { echo "perf_analyzer does not start: $usage" >&2; exit 1; }
echo "$dest/perf_analyzer"
