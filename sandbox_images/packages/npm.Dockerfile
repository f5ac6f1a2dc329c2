# mcp-runner/npm-NAME: one npm MCP server (`mcp-runner images add npm:NAME[@VERSION]`), FROM the node-servers image
# (node, the agent and its entrypoint); node_modules were installed on the host (exact lockfile, no install scripts).
# The runner appends `CMD ["<the package's bin>"]`: a profile without `command:` runs it.
ARG BASE
FROM ${BASE}
COPY node/ /opt/package/
ENV PATH=/opt/package/node_modules/.bin:/opt/node-servers/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10001:10001
