# Shell helpers shared by scripts/*.sh; `source scripts/lib.sh` defines functions and runs nothing.

# apt_install PKG...: install Debian packages quietly (as root, else through sudo); returns 1 where there is no apt-get.
apt_install() {
  command -v apt-get >/dev/null || return 1
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || $sudo apt-get update -qq
  $sudo apt-get install -y -qq "$@" >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null; }
}
