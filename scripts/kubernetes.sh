#!/usr/bin/env bash
# The project's single-node Kubernetes v1.20.2 test cluster on this machine, offline (`make kubernetes`).
#
#   scripts/kubernetes.sh up      bring it up, or find it up (idempotent; restarts it when a process died)
#   scripts/kubernetes.sh down    stop it by pid, kubelet first, and remove what pods left on the node
#   scripts/kubernetes.sh status  say what runs; exit 0 only when the API answers and the node is Ready
#
# Binaries come from scripts/kubernetes-build.sh (cached outside the checkout). The container runtime is a
# PRIVATE containerd (own socket, root and state), so the machine's Docker engine is never touched. Certificates,
# etcd data and imported images survive `down`; pods' containers, mounts, cgroups, iptables chains and the CNI
# bridge do not. Why each setting: ../shared/kubernetes-offline.md and the comments in scripts/kubernetes/.
#
# Stable paths other tools rely on (also written to $RUN/env, a shell-sourceable file):
#   kubeconfig (admin, client certificate)  ~/.kube/mcp-runner-test.yaml
#   containerd socket (images: ctr -a SOCKET -n k8s.io images import -)  /run/mcp-runner-kubernetes/containerd/containerd.sock
#   logs /var/log/mcp-runner-kubernetes/   pids /run/mcp-runner-kubernetes/*.pid
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATES="$HERE/kubernetes"
STATE=/var/lib/mcp-runner-kubernetes
RUN=/run/mcp-runner-kubernetes
LOGS=/var/log/mcp-runner-kubernetes
SOCKET="$RUN/containerd/containerd.sock"
PKI="$STATE/pki"
KUBECONFIG_OUT="${MCP_RUNNER_KUBECONFIG:-$HOME/.kube/mcp-runner-test.yaml}"
NAMESPACE=mcp-runner
POD_CIDR=10.88.0.0/16          # clear of Docker's 172.17/16 and the 172.18+ / 192.168 ranges its networks use
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1       # the first address of SERVICE_CIDR: the `kubernetes` Service
API_PORT=6443
ETCD_CLIENT_URL=http://127.0.0.1:12379   # not 2379: Debian's etcd package may run its own instance there
ETCD_PEER_URL=http://127.0.0.1:12380
PAUSE_IMAGE=k8s.gcr.io/pause:3.2         # v1.20's default name, so nothing ever tries to pull another one
POD_MAX_PIDS="${MCP_RUNNER_KUBERNETES_POD_MAX_PIDS:-1024}"
CNI_NETWORK=mcp-runner-k8s
CNI_BRIDGE=mcpk8s0
CNI_BIN_DIR=/usr/lib/cni
RULE_COMMENT=mcp-runner-kubernetes
READY_TIMEOUT_S="${MCP_RUNNER_KUBERNETES_TIMEOUT:-180}"
# Start order; `down` stops the kubelet first, then the rest in reverse.
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

say() { echo "[kubernetes] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- what the machine needs

require_root() { [[ $EUID -eq 0 ]] || die "must run as root (it starts a kubelet, containerd and iptables rules)"; }

ensure_packages() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    [[ -x "$CNI_BIN_DIR/bridge" && -x "$CNI_BIN_DIR/host-local" && -x "$CNI_BIN_DIR/loopback" ]] \
        || missing+=(containernetworking-plugins)
    command -v containerd >/dev/null && command -v ctr >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v conntrack >/dev/null || missing+=(conntrack)   # kube-proxy clears stale UDP entries with it
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)           # etcd's health check
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing Debian packages: ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

kube_bin() { bash "$HERE/kubernetes-build.sh" | tail -n1; }

node_ip() {
    local dev
    dev="$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')"
    [[ -n "$dev" ]] || die "no default IPv4 route: cannot choose the node's address"
    ip -4 -o addr show dev "$dev" scope global | awk '{split($4, a, "/"); print a[1]; exit}'
}

node_name() { hostname | tr '[:upper:]' '[:lower:]'; }

cgroup_driver() {
    # cgroupfs unless systemd runs the machine and owns the cgroup tree.
    if [[ -d /run/systemd/system ]]; then echo systemd; else echo cgroupfs; fi
}

# ---------------------------------------------------------------- processes, by pid

pid_of() { [[ -r "$RUN/$1.pid" ]] && cat "$RUN/$1.pid"; }

is_running() {
    # The pid file survives a reboot here (/run is not always a tmpfs): check the process is still the component.
    local pid
    pid="$(pid_of "$1")" || return 1
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    local argv0
    argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)"
    [[ "${argv0##*/}" == "$1" ]]
}

start() {
    local name="$1"; shift
    local log="$LOGS/$name.log"
    is_running "$name" && return
    [[ -f "$log" ]] && mv -f "$log" "$log.1"
    # 9>&-: the daemons must not inherit (and so hold forever) the lock on fd 9.
    setsid nohup "$@" >"$log" 2>&1 </dev/null 9>&- &
    echo $! >"$RUN/$name.pid"
    sleep 0.3
    is_running "$name" || { tail -n 30 "$log" >&2; die "$name exited at once (log: $log)"; }
    say "started $name (pid $(pid_of "$name"), log $log)"
}

stop() {
    local name="$1" pid waited=0
    if is_running "$name"; then
        pid="$(pid_of "$name")"
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && ((waited < 150)); do sleep 0.1; waited=$((waited + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$RUN/$name.pid"
}

wait_quietly() {
    # wait_quietly SECONDS COMMAND...: poll until COMMAND succeeds; status 1 on timeout.
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

wait_for() {
    # wait_for SECONDS WHAT COMMAND...: like wait_quietly; on timeout show every log's tail and fail.
    local seconds="$1" what="$2" name
    shift 2
    wait_quietly "$seconds" "$@" && return
    for name in "${COMPONENTS[@]}"; do
        say "--- $name ($(is_running "$name" && echo "running" || echo "NOT running")): $LOGS/$name.log"
        tail -n 12 "$LOGS/$name.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    done
    die "timed out after ${seconds}s waiting for $what"
}

# ---------------------------------------------------------------- certificates and kubeconfigs

sign() {
    # sign NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]: a key and a certificate signed by the cluster CA.
    local name="$1" subject="$2" usage="$3" sans="${4:-}"
    local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$usage"
    [[ -n "$sans" ]] && ext+=$'\n'"subjectAltName=$sans"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
        -sha256 -extfile <(echo "$ext") -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr"
    chmod 600 "$PKI/$name.key"
}

ensure_pki() {
    local ip="$1" node="$2"
    mkdir -p "$PKI"
    if [[ ! -f "$PKI/ca.crt" ]]; then
        say "creating the cluster's certificate authority and certificates in $PKI (openssl)"
        openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -subj "/CN=mcp-runner-kubernetes-ca" \
            -days 3650 -sha256 -out "$PKI/ca.crt" 2>/dev/null
        chmod 600 "$PKI/ca.key"
        openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
        openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
        chmod 600 "$PKI/sa.key"
        # Clients. system:masters is RBAC's superuser group: the admin and the API server talking to kubelets.
        sign admin "/O=system:masters/CN=mcp-runner-admin" clientAuth
        sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
        sign controller-manager "/CN=system:kube-controller-manager" clientAuth
        sign scheduler "/CN=system:kube-scheduler" clientAuth
        sign kube-proxy "/CN=system:kube-proxy" clientAuth
        rm -f "$PKI/node"
    fi
    # Servers and the node's identity: made again when the node's address or name changed.
    if [[ "$(cat "$PKI/node" 2>/dev/null)" != "$ip $node" ]]; then
        say "signing the API server's and the kubelet's certificates for $node ($ip)"
        sign apiserver "/CN=kube-apiserver" serverAuth \
            "IP:127.0.0.1,IP:$ip,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        sign kubelet-serving "/CN=$node" serverAuth "IP:$ip,IP:127.0.0.1,DNS:$node"
        sign kubelet "/O=system:nodes/CN=system:node:$node" clientAuth
        echo "$ip $node" >"$PKI/node"
    fi
}

write_kubeconfig() {
    # write_kubeconfig PATH USER CERT_NAME: a self-contained kubeconfig (certificates embedded).
    local path="$1" user="$2" cert="$3"
    umask 077
    cat >"$path" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mcp-runner-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: mcp-runner-test
  context:
    cluster: mcp-runner-test
    user: $user
    namespace: $NAMESPACE
current-context: mcp-runner-test
EOF
    umask 022
}

ensure_kubeconfigs() {
    mkdir -p "$STATE/kubeconfig" "$(dirname "$KUBECONFIG_OUT")"
    write_kubeconfig "$STATE/kubeconfig/admin.yaml" mcp-runner-admin admin
    write_kubeconfig "$STATE/kubeconfig/controller-manager.yaml" system:kube-controller-manager controller-manager
    write_kubeconfig "$STATE/kubeconfig/scheduler.yaml" system:kube-scheduler scheduler
    write_kubeconfig "$STATE/kubeconfig/kube-proxy.yaml" system:kube-proxy kube-proxy
    write_kubeconfig "$STATE/kubeconfig/kubelet.yaml" "system:node:$2" kubelet
    install_admin_kubeconfig
}

install_admin_kubeconfig() {
    cmp -s "$STATE/kubeconfig/admin.yaml" "$KUBECONFIG_OUT" && return
    install -m 600 "$STATE/kubeconfig/admin.yaml" "$KUBECONFIG_OUT"
    say "wrote the admin kubeconfig to $KUBECONFIG_OUT"
}

# ---------------------------------------------------------------- configuration files from scripts/kubernetes/

render() {
    # render TEMPLATE DEST: fill in the @NAMES@ of a template; DEST is replaced only when it changes, because
    # kube-proxy exits as soon as its configuration file is written.
    render_to_stdout "$1" >"$2.new"
    if cmp -s "$2.new" "$2"; then rm -f "$2.new"; else mv -f "$2.new" "$2"; fi
}

render_to_stdout() {
    sed -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" -e "s|@SOCKET@|$SOCKET|g" -e "s|@PKI@|$PKI|g" \
        -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" -e "s|@CNI_BIN_DIR@|$CNI_BIN_DIR|g" -e "s|@CNI_NETWORK@|$CNI_NETWORK|g" \
        -e "s|@CNI_BRIDGE@|$CNI_BRIDGE|g" -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@NODE_IP@|$NODE_IP|g" \
        -e "s|@NODE_NAME@|$NODE|g" -e "s|@POD_MAX_PIDS@|$POD_MAX_PIDS|g" -e "s|@RESOLV_CONF@|/etc/resolv.conf|g" \
        -e "s|@CGROUP_DRIVER@|$(cgroup_driver)|g" \
        -e "s|@SYSTEMD_CGROUP@|$([[ $(cgroup_driver) == systemd ]] && echo true || echo false)|g" \
        "$TEMPLATES/$1"
}

write_configs() {
    mkdir -p "$STATE/config" "$STATE/cni/net.d" "$STATE/containerd/root" "$STATE/kubelet" "$STATE/etcd"
    render containerd.toml "$STATE/config/containerd.toml"
    render cni.conflist "$STATE/cni/net.d/10-$CNI_NETWORK.conflist"
    render kubelet.yaml "$STATE/config/kubelet.yaml"
    render kube-proxy.yaml "$STATE/config/kube-proxy.yaml"
}

# ---------------------------------------------------------------- host network: coexisting with Docker's rules

allow_pod_forwarding() {
    # Docker sets the FORWARD policy to DROP and br_netfilter sends bridged pod traffic through FORWARD:
    # accept what enters or leaves the pod bridge, and masquerade pods' traffic leaving the node. Appended after
    # Docker's rules, tagged with a comment so `down` removes exactly these.
    sysctl -qw net.ipv4.ip_forward=1
    modprobe br_netfilter 2>/dev/null || true
    [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
    local rule
    for rule in "FORWARD -i $CNI_BRIDGE" "FORWARD -o $CNI_BRIDGE"; do
        # shellcheck disable=SC2086
        iptables -C $rule -m comment --comment "$RULE_COMMENT" -j ACCEPT 2>/dev/null \
            || iptables -A $rule -m comment --comment "$RULE_COMMENT" -j ACCEPT
    done
    rule="POSTROUTING -s $POD_CIDR ! -o $CNI_BRIDGE"
    # shellcheck disable=SC2086
    iptables -t nat -C $rule -m comment --comment "$RULE_COMMENT" -j MASQUERADE 2>/dev/null \
        || iptables -t nat -A $rule -m comment --comment "$RULE_COMMENT" -j MASQUERADE
}

remove_iptables_rules() {
    # KUBE-* chains (kube-proxy's and the kubelet's) and this script's tagged rules, in every table, IPv4 and IPv6.
    # Docker's chains (DOCKER*) are never named here.
    local tool table line chain
    for tool in iptables ip6tables; do
        command -v "$tool" >/dev/null || continue
        for table in filter nat mangle raw; do
            "$tool" -t "$table" -S >/dev/null 2>&1 || continue
            while IFS= read -r line; do
                eval "\"$tool\" -t $table -D ${line#-A }" 2>/dev/null || true
            done < <("$tool" -t "$table" -S | grep -E '^-A ' | grep -vE '^-A KUBE-' \
                | grep -E -- "-j KUBE-|--comment \"?$RULE_COMMENT\"? " || true)
            for chain in $("$tool" -t "$table" -S | awk '/^-N KUBE-/ {print $2}'); do
                "$tool" -t "$table" -F "$chain" 2>/dev/null || true
            done
            for chain in $("$tool" -t "$table" -S | awk '/^-N KUBE-/ {print $2}'); do
                "$tool" -t "$table" -X "$chain" 2>/dev/null || true
            done
        done
    done
}

# ---------------------------------------------------------------- images in the private containerd

ctr_k8s() { ctr -a "$SOCKET" -n k8s.io "$@"; }

ensure_pause_image() {
    ctr_k8s images ls -q 2>/dev/null | grep -qxF "$PAUSE_IMAGE" && return
    say "importing the pod sandbox image $PAUSE_IMAGE (FROM scratch, the static pause binary) into containerd"
    /usr/bin/python3 "$TEMPLATES/pause-image.py" "$BIN/pause" "$PAUSE_IMAGE" | ctr_k8s images import - >/dev/null
}

# ---------------------------------------------------------------- the API, through the built kubectl

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig/admin.yaml" --request-timeout=5s "$@"; }
api_ready() { [[ "$(kubectl_admin get --raw /readyz 2>/dev/null)" == ok ]]; }
node_ready() {
    [[ "$(kubectl_admin get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" \
        == True ]]
}
node_schedulable() { node_ready && [[ -z "$(kubectl_admin get node "$NODE" -o jsonpath='{.spec.taints}')" ]]; }
namespace_ready() {
    # The namespace and its default service account's token Secret (pods using the API need it).
    kubectl_admin get namespace "$NAMESPACE" >/dev/null 2>&1 \
        || kubectl_admin create namespace "$NAMESPACE" >/dev/null 2>&1 || return 1
    [[ -n "$(kubectl_admin -n "$NAMESPACE" get serviceaccount default -o jsonpath='{.secrets[0].name}' 2>/dev/null)" ]]
}
cluster_up() { api_ready && node_schedulable && namespace_ready; }
all_running() { local name; for name in "${COMPONENTS[@]}"; do is_running "$name" || return 1; done; }

# ---------------------------------------------------------------- up

start_all() {
    start etcd "$(command -v etcd)" --name mcp-runner --data-dir "$STATE/etcd" \
        --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
        --listen-peer-urls "$ETCD_PEER_URL" --initial-advertise-peer-urls "$ETCD_PEER_URL" \
        --initial-cluster "mcp-runner=$ETCD_PEER_URL"
    start containerd "$(command -v containerd)" --config "$STATE/config/containerd.toml"
    wait_for 60 "etcd to answer on $ETCD_CLIENT_URL" curl -fsS "$ETCD_CLIENT_URL/health"
    wait_for 60 "containerd to answer on $SOCKET" ctr -a "$SOCKET" version
    ensure_pause_image

    start kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers="$ETCD_CLIENT_URL" \
        --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port="$API_PORT" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --allow-privileged=false --profiling=false
    wait_for 90 "the API server to be ready" api_ready

    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$STATE/kubeconfig/controller-manager.yaml" \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
        --leader-elect=false --bind-address=127.0.0.1 --port=0 --profiling=false
    start kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$STATE/kubeconfig/scheduler.yaml" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0 --profiling=false
    start kubelet "$BIN/kubelet" \
        --config="$STATE/config/kubelet.yaml" --kubeconfig="$STATE/kubeconfig/kubelet.yaml" \
        --container-runtime=remote --container-runtime-endpoint="unix://$SOCKET" \
        --image-service-endpoint="unix://$SOCKET" --pod-infra-container-image="$PAUSE_IMAGE" \
        --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" \
        --hostname-override="$NODE" --node-ip="$NODE_IP"
    start kube-proxy "$BIN/kube-proxy" --config="$STATE/config/kube-proxy.yaml"
}

up() {
    require_root
    mkdir -p "$RUN" "$LOGS" "$STATE"
    exec 9>"$RUN/lock"
    flock 9   # one `make kubernetes` at a time (a second one waits, then finds the cluster up)
    ensure_packages
    BIN="$(kube_bin)/bin"
    NODE_IP="$(node_ip)"
    NODE="$(node_name)"
    local stopped=() name
    for name in "${COMPONENTS[@]}"; do is_running "$name" || stopped+=("$name"); done
    if [[ ${#stopped[@]} -eq 0 && -f "$STATE/kubeconfig/admin.yaml" ]] && wait_quietly 30 cluster_up; then
        # (A cluster still starting gets those 30 seconds before it counts as broken.)
        install_admin_kubeconfig
        write_env
        say "already up: node $NODE Ready ($("$BIN/kubectl" version --client --short 2>/dev/null | awk '{print $3}'))"
        summary
        return
    fi
    if [[ ${#stopped[@]} -gt 0 && ${#stopped[@]} -lt ${#COMPONENTS[@]} \
          && "$(cat "$PKI/node" 2>/dev/null)" == "$NODE_IP $NODE" ]]; then
        # Components tolerate their peers' restarts: start only what stopped, keep the pods running.
        say "restarting what stopped (${stopped[*]}); the rest keeps running"
        prepare_and_start
        if wait_quietly "$READY_TIMEOUT_S" cluster_up; then
            finish
            return
        fi
        say "still not Ready: restarting the whole cluster"
    elif [[ ${#stopped[@]} -eq 0 ]]; then
        say "the processes run but the API does not answer or node $NODE is not Ready: restarting the cluster"
    else
        say "starting the cluster (node $NODE, $NODE_IP; pods $POD_CIDR, services $SERVICE_CIDR)," \
            "after removing what an earlier run left"
    fi
    teardown
    prepare_and_start
    say "waiting for node $NODE to be Ready and schedulable (at most ${READY_TIMEOUT_S}s)"
    wait_for "$READY_TIMEOUT_S" "node $NODE to be Ready and without taints" node_schedulable
    wait_for 60 "namespace $NAMESPACE and its service account token" namespace_ready
    finish
}

prepare_and_start() {
    ensure_pki "$NODE_IP" "$NODE"
    ensure_kubeconfigs "$NODE_IP" "$NODE"
    write_configs
    allow_pod_forwarding
    start_all
}

finish() {
    write_env
    say "up: node $NODE Ready"
    summary
}

write_env() {
    cat >"$RUN/env" <<EOF
# Written by scripts/kubernetes.sh up: the project's test cluster (source it from a shell).
KUBECONFIG=$KUBECONFIG_OUT
MCP_RUNNER_KUBERNETES_BIN=$BIN
MCP_RUNNER_KUBERNETES_KUBECTL=$BIN/kubectl
MCP_RUNNER_KUBERNETES_CONTAINERD=$SOCKET
MCP_RUNNER_KUBERNETES_CONTAINERD_NAMESPACE=k8s.io
MCP_RUNNER_KUBERNETES_NODE=$NODE
MCP_RUNNER_KUBERNETES_NODE_IP=$NODE_IP
MCP_RUNNER_KUBERNETES_POD_CIDR=$POD_CIDR
MCP_RUNNER_KUBERNETES_SERVICE_CIDR=$SERVICE_CIDR
MCP_RUNNER_KUBERNETES_POD_MAX_PIDS=$POD_MAX_PIDS
MCP_RUNNER_KUBERNETES_PAUSE_IMAGE=$PAUSE_IMAGE
MCP_RUNNER_KUBERNETES_NAMESPACE=$NAMESPACE
EOF
}

summary() {
    cat >&2 <<EOF
[kubernetes]   kubeconfig  $KUBECONFIG_OUT   (namespace $NAMESPACE)
[kubernetes]   kubectl     $BIN/kubectl   (/usr/bin/kubectl may be another one)
[kubernetes]   images      docker save REF | ctr -a $SOCKET -n k8s.io images import -   (pods: imagePullPolicy Never)
[kubernetes]   no DNS (no CoreDNS image): pods use the host's resolv.conf; the API is \$KUBERNETES_SERVICE_HOST ($API_SERVICE_IP)
[kubernetes]   env $RUN/env   logs $LOGS/   stop: make kubernetes-down
EOF
}

# ---------------------------------------------------------------- down

mount_points_under() {
    # Mount points at or below the given directories, deepest first (the kubelet bind-mounts its own root dir).
    awk '{print $5}' /proc/self/mountinfo | grep -E "^($(IFS='|'; echo "$*"))(/|\$)" | awk '{print length, $0}' \
        | sort -rn | cut -d' ' -f2- || true
}

kill_pod_processes() {
    # Every process in the kubelet's kubepods cgroups belongs to a pod of this cluster (Docker uses /docker).
    local dirs pids
    mapfile -t dirs < <(find /sys/fs/cgroup -maxdepth 2 -type d -name kubepods 2>/dev/null)
    [[ ${#dirs[@]} -gt 0 ]] || return 0
    for _ in {1..10}; do
        pids="$(find "${dirs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | tr '\n' ' ')"
        [[ -n "${pids// /}" ]] || break
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.2
    done
    find "${dirs[@]}" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

kill_shims() {
    # containerd shims outlive containerd; ours name our socket on their command line.
    local proc pid
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -q -- "-address $SOCKET " || continue
        kill -KILL "$pid" 2>/dev/null || true
    done
}

remove_containers() {
    # With containerd still up: drop every pod container from its metadata, so a restart begins clean.
    is_running containerd || return 0
    local id
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" >/dev/null 2>&1 || true; done
}

teardown() {
    # Stop everything of this cluster and remove what its pods left on the node. Images, certificates and etcd
    # data stay. Never touches the Docker engine: only our pids, our socket's shims, kubepods cgroups, mounts
    # under our directories, our bridge, KUBE-* chains and our tagged rules.
    local name mount
    stop kubelet
    kill_pod_processes
    remove_containers
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        name="${COMPONENTS[i]}"
        [[ "$name" == kubelet ]] || stop "$name"
    done
    kill_shims
    kill_pod_processes
    while read -r mount; do
        [[ -n "$mount" ]] || continue
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || say "could not unmount $mount"
    done < <(mount_points_under "$STATE/kubelet" "$RUN" /var/lib/kubelet)
    [[ -d "$STATE/kubelet/pods" ]] && rm -rf --one-file-system "$STATE/kubelet/pods"
    rm -rf --one-file-system "$RUN/containerd/state" "$STATE/cni/networks"
    rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
    rm -rf /var/log/pods/* /var/log/containers/* 2>/dev/null || true
    ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && ip link delete "$CNI_BRIDGE"
    if [[ -n "${BIN:-}" && -x "$BIN/kube-proxy" ]]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
    remove_iptables_rules
}

down() {
    require_root
    mkdir -p "$RUN"
    exec 9>"$RUN/lock"
    flock 9
    # The binaries the cluster ran, for kube-proxy's own clean-up; never build just to tear down.
    BIN="$(sed -n 's/^MCP_RUNNER_KUBERNETES_BIN=//p' "$RUN/env" 2>/dev/null || true)"
    say "tearing down the test cluster (binaries, certificates, etcd data and imported images stay)"
    teardown
    rm -f "$RUN/env"
    say "down"
}

status() {
    local name rc=0
    for name in "${COMPONENTS[@]}"; do
        if is_running "$name"; then say "$name: running (pid $(pid_of "$name"))"; else say "$name: not running"; rc=1; fi
    done
    [[ -f "$RUN/env" ]] || { say "not up (no $RUN/env)"; return 1; }
    BIN="$(sed -n 's/^MCP_RUNNER_KUBERNETES_BIN=//p' "$RUN/env")"
    NODE="$(sed -n 's/^MCP_RUNNER_KUBERNETES_NODE=//p' "$RUN/env")"
    if cluster_up; then say "API ready, node $NODE Ready"; else say "API not ready or node $NODE not Ready"; rc=1; fi
    return "$rc"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
