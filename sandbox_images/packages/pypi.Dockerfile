# mcp-runner/pypi-NAME: one PyPI MCP server (`mcp-runner images add pypi:NAME[==VERSION]`) in its own venv,
# FROM the python-servers image (the agent and its entrypoint), installed offline from wheels fetched on the host.
# The runner appends `CMD ["<the package's executable>"]`: a profile without `command:` runs it.
ARG BASE
FROM ${BASE} AS build
USER root
COPY wheels/ /build/wheels/
COPY requirement.txt /build/requirement.txt
RUN set -eux; \
    python3 -m venv /opt/package; \
    /opt/package/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /build/wheels -r /build/requirement.txt; \
    /opt/package/bin/python -m compileall -q /opt/package >/dev/null || true

FROM ${BASE}
COPY --from=build /opt/package /opt/package
ENV PATH=/opt/package/bin:/opt/servers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10001:10001
