#!/usr/bin/env bash
# Build build/milter_VERSION-REVISION_ARCH.deb: a virtual environment of Debian's
# python3.11 under /opt/milter holding the wheel and its dependencies, /usr/bin/milter
# pointing into it, the systemd units, sysusers.d and tmpfiles.d entries, and the
# maintainer scripts in packaging/debian/.
#
# Why not dh-virtualenv: it needs debhelper, a debian/ source tree and
# dpkg-buildpackage for what comes down to the same steps (create a venv, install,
# rewrite the build path out of the scripts); this is those steps, in seconds, with
# nothing beyond dpkg-deb and Debian's python3.11.
#
# Usage: packaging/build-deb.sh [OUTDIR]   (run from anywhere; needs network for pip
# unless pip's cache already holds the wheels)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="$(realpath -m "${1:-$repo/build}")"
python=/usr/bin/python3.11
prefix=/opt/milter
revision=1
builder_pip="${PIP:-$repo/.venv/bin/pip}"

[ -x "$python" ] || { echo "build-deb: $python missing (apt-get install python3.11)" >&2; exit 1; }
[ -x "$builder_pip" ] || { echo "build-deb: $builder_pip missing (make venv)" >&2; exit 1; }

version="$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")"
arch="$(dpkg --print-architecture)"
work="$out/deb-work"
root="$work/root"
rm -rf "$work"
mkdir -p "$work/dist" "$root/DEBIAN"

# 1. The wheel (build isolation: exactly what pyproject.toml declares), from a copy of
#    the sources: setuptools keeps build/lib between builds, and a module deleted from
#    the tree would otherwise still be packaged.
mkdir -p "$work/src"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./var \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' -cf - . |
    tar -C "$work/src" -xf -
"$builder_pip" wheel -q --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/milter-*.whl)"

# 2. The environment, at its build path: no pip inside (nothing installs into it
#    after the package is built), packages installed by the builder's pip running
#    against the target interpreter, so the binary wheels match Debian's python3.11.
"$python" -m venv --without-pip "$root$prefix"
"$builder_pip" --python "$root$prefix/bin/python" install -q --no-compile \
    --disable-pip-version-check "${wheel}[postgres]"

# 3. Relocate: scripts and pyvenv.cfg name the build path; the package installs at
#    $prefix. Activation scripts are for interactive shells, not a service: dropped.
rm -f "$root$prefix"/bin/activate* "$root$prefix"/bin/Activate.ps1
grep -rlI --null "$root$prefix" "$root$prefix/bin" "$root$prefix/pyvenv.cfg" |
    xargs -0 -r sed -i "s#$root$prefix#$prefix#g"
find "$root$prefix" -name direct_url.json -path '*.dist-info/*' -delete
if leftover="$(grep -rlI "$root" "$root$prefix")"; then
    echo "build-deb: the build path is still named in:" >&2
    echo "$leftover" >&2
    exit 1
fi
# Bytecode, compiled now under the installed path: the service cannot write
# __pycache__ (ProtectSystem=strict), and tracebacks name /opt/milter files.
# olefile ships olefile2.py, a Python 2 module nothing imports; it cannot compile.
"$python" -m compileall -q -j 0 -s "$root" -p / -x '/olefile/olefile2\.py$' \
    "$root$prefix/lib" >/dev/null

# 4. Everything around the environment.
install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/usr/lib/tmpfiles.d" "$root/usr/share/doc/milter/examples"
ln -s "$prefix/bin/milter" "$root/usr/bin/milter"
install -m 0644 "$repo"/systemd/*.service "$repo"/systemd/*.timer "$root/lib/systemd/system/"
install -m 0644 "$here/milter.sysusers" "$root/usr/lib/sysusers.d/milter.conf"
install -m 0644 "$here/milter.tmpfiles" "$root/usr/lib/tmpfiles.d/milter.conf"
install -m 0644 "$repo/README.md" "$root/usr/share/doc/milter/README.md"
cp -r "$repo/examples/postfix" "$root/usr/share/doc/milter/examples/"
cat >"$root/usr/share/doc/milter/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: milter
Source: the milter repository
Comment: /opt/milter/lib holds the Python dependencies with their own licences,
 listed in each *.dist-info directory.

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version-$revision/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    "$here/debian/control.in" >"$root/DEBIAN/control"
find "$root" -type d -exec chmod 0755 {} +

# 5. The archive: files owned by root whoever builds; gzip is fast and small enough.
deb="$out/milter_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$deb" >/dev/null
rm -rf "$work"
echo "$deb"
