#!/data/data/com.termux/files/usr/bin/bash
# Install a meshcloud core node on Android, in Termux (https://termux.dev, from F-Droid or
# GitHub, not the Play Store build). See docs/phones.md for what to set on the phone.
#
#   bash scripts/termux-install.sh [SOURCE]     SOURCE: a checkout (default: this one)
#
# Only the core install: trio, pynacl (against Termux's libsodium), cbor2, lmdb, zfec and
# the pure-Python web stack. cryptography comes prebuilt from Termux (building it needs
# Rust). No containers on a phone: the podman extra is not installed.
set -euo pipefail

SOURCE="${1:-$(cd "$(dirname "$0")/.." && pwd)}"

pkg update -y
# python and its build tools; libsodium for pynacl; the prebuilt cryptography;
# termux-api for the battery and network readings (also install the Termux:API app)
pkg install -y python clang make binutils libsodium python-cryptography termux-api

# the rest builds from source against Termux's libraries:
#  - pynacl links the system libsodium instead of building its own
#  - lmdb and zfec are small C extensions clang builds
export SODIUM_INSTALL=system
python -m pip install --upgrade pip wheel
python -m pip install "$SOURCE"

mkdir -p "$HOME/.termux/boot"
cat > "$HOME/.termux/boot/meshcloud" <<'BOOT'
#!/data/data/com.termux/files/usr/bin/sh
# started by Termux:Boot after the phone boots (see docs/phones.md)
termux-wake-lock
exec meshcloud up --profile phone >> "$HOME/meshcloud-console.log" 2>&1
BOOT
chmod 755 "$HOME/.termux/boot/meshcloud"

echo
echo "installed: $(meshcloud --version 2>/dev/null || echo meshcloud)"
echo "next: meshcloud join TOKEN --profile phone   (a token from: meshcloud invite, on a member)"
echo "      then: termux-wake-lock; meshcloud up --profile phone"
echo "read docs/phones.md: battery optimisation and the phantom process killer"
