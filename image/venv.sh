#!/bin/sh
# Make /venv and install kloop from /src into it (run inside the Dockerfile's builder stages).
#   venv.sh operator   kloop with all its dependencies (kopf, kubernetes, ...)
#   venv.sh kit        kloop without its dependencies, plus pydantic and openai: all kloop-agent
#                      imports (openai for `kloop-agent run --harness openai`)
# With wheels in /ctx/wheels (`make wheels`) nothing touches the network (--no-index; pip runs
# from its own wheel, so the base needs no pip); without them pip uses the base's pip and the
# package index. No pip itself, cache or wheel is left in /venv.
set -eu
mode=$1
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m venv --without-pip /venv
if ls /ctx/wheels/*.whl >/dev/null 2>&1; then
  pip_wheel=$(ls /ctx/wheels/pip-*.whl | head -n 1)
  pip() { /venv/bin/python "$pip_wheel/pip" install --no-index --find-links /ctx/wheels "$@"; }
else
  echo "venv.sh: no wheels in image/wheels, installing from the package index" >&2
  pip() { python3 -m pip --python /venv/bin/python install "$@"; }
fi
if [ "$mode" = kit ]; then
  pip pydantic openai
  pip --no-deps /src
else
  pip /src
fi
rm -rf /src/build /src/operator/*.egg-info
