"""The importers need PyTorch, which scripts/install-deps.sh installs for
Debian's /usr/bin/python3 (python3-torch). Run by another python3 without
it (pyenv, a venv without system packages), an importer hands itself over
to /usr/bin/python3 instead of stopping at `import torch`, and says so.
Imported for its effect, before `import torch`."""
import os, sys

try:
    import torch  # noqa: F401
except ImportError:
    debian = "/usr/bin/python3"
    if os.path.realpath(sys.executable) != os.path.realpath(debian) and os.path.exists(debian) \
            and not os.environ.get("SEGPIPE_NO_REEXEC"):
        print(f"note: {sys.executable} has no PyTorch; running {os.path.basename(sys.argv[0])} with {debian} "
              "(python3-torch, from scripts/install-deps.sh)", file=sys.stderr)
        os.environ["SEGPIPE_NO_REEXEC"] = "1"
        os.execv(debian, [debian] + sys.argv)
    sys.exit(f"{os.path.basename(sys.argv[0])}: needs PyTorch (Debian: apt install python3-torch, which "
             "scripts/install-deps.sh does for /usr/bin/python3)")
