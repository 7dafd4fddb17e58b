# kloop images. One Dockerfile, two targets (docs/images.md):
#   --target operator   kloop-operator, non-root (65532), a venv, the base's Python and git (for
#                       git triggers: `git ls-remote`)
#   --target kit        the agent kit for makers and checkers: python3, kloop-agent (with the openai
#                       SDK for `kloop-agent run`), kubectl, git, busybox applets; non-root (65532)
#
# BASE and KIT_BASE are Debian (bookworm) images with python3. The defaults are Docker Hub's
# python slim image; `make image` passes bases that mmdebstrap made on this machine, because it
# has no registry. The operator stage installs git, the kit stage git and busybox-static, with
# apt when their base lacks them (Docker Hub's base does; the local bases already have them, so
# no network is needed).
#
# Wheels: when image/wheels/ holds wheels (`make wheels`), every install is --no-index from
# them; when it is empty, pip falls back to the package index (a Docker build with network).
# The kit also needs image/bin/kubectl (`make wheels` puts the harness's pinned kubectl there).
ARG BASE=python:3.11-slim-bookworm
ARG KIT_BASE=python:3.11-slim-bookworm

# --- builders: a venv per final image, made on the base it will run on -------------------------
FROM ${BASE} AS builder
COPY image/ /ctx/
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
RUN sh /ctx/venv.sh operator

FROM ${KIT_BASE} AS kit-builder
COPY image/ /ctx/
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
RUN { test -x /ctx/bin/kubectl \
     || { echo "image/bin/kubectl is missing: run 'make wheels' (or copy one there)" >&2; exit 1; }; } \
 && sh /ctx/venv.sh kit

# --- the operator -----------------------------------------------------------------------------
FROM ${BASE} AS operator
RUN if ! command -v git >/dev/null; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        git ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi \
 && echo 'kloop:x:65532:65532:kloop:/home/kloop:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'kloop:x:65532:' >> /etc/group \
 && mkdir -p /home/kloop && chown 65532:65532 /home/kloop
COPY --from=builder /venv /venv
ENV PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kloop
WORKDIR /home/kloop
USER 65532:65532
ENTRYPOINT ["/venv/bin/kloop-operator"]

# --- the agent kit ----------------------------------------------------------------------------
FROM ${KIT_BASE} AS kit
RUN set -eu; need=""; \
    command -v git >/dev/null || need="git"; \
    [ -x /bin/busybox ] || need="$need busybox-static"; \
    if [ -n "$need" ]; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        $need ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi; \
    for applet in $(busybox --list-full); do \
      [ -e "/$applet" ] || [ -L "/$applet" ] || { mkdir -p "/${applet%/*}"; ln -s /bin/busybox "/$applet"; }; \
    done; \
    echo 'kloop:x:65532:65532:kloop:/home/kloop:/bin/sh' >> /etc/passwd; \
    echo 'kloop:x:65532:' >> /etc/group; \
    mkdir -p /home/kloop && chown 65532:65532 /home/kloop
COPY --from=kit-builder /venv /venv
COPY --from=kit-builder /ctx/bin/kubectl /usr/local/bin/kubectl
RUN ln -s /venv/bin/kloop-agent /usr/local/bin/kloop-agent
ENV PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kloop
WORKDIR /home/kloop
USER 65532:65532
CMD ["/bin/sh"]
