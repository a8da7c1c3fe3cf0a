{#- firewalld on the gateway: the service, and the gateway's rich rules derived from
    the same pillar as the tunnel and the pooler (IKE, NAT-T and ESP from the remote
    gateways, ipset vgw-peers; the pooler and node exporter ports from the Kubernetes
    nodes, ipset vgw-nodes; the salt-master's side of the minion's connections), applied
    to runtime and permanent configuration in one batch, without a reload: a node or a
    peer is one ipset entry, the rule count stays the same (creating the ipsets, once,
    needs firewalld's reload). Rules and entries this pack added and no longer derives
    are removed (prune_owned); a rule set that would cut SSH from a management network
    or the salt-master's connection is refused. #}
include:
  - vpn_gateway.recovery_lock

{%- from "vpn_gateway/map.jinja" import gateway with context %}
{%- set fw = salt['pillar.get']('vpn_gateway:firewall', {}) %}
{%- set master = fw.get('salt_master') or salt['config.get']('master') %}
{%- set peers = salt['pillar.get']('vpn_gateway:tunnel:peers', {}) %}
{%- set nodes = salt['pillar.get']('vpn_gateway:kubernetes:nodes', []) %}
{%- set rules = salt['vpn_gateway.firewall_rules'](
      peers, nodes, salt['pillar.get']('vpn_gateway:pooler:listen_port', 6432),
      fw.get('node_exporter_port', 9100), master) + fw.get('rules', []) %}
{%- set ipsets = salt['vpn_gateway.firewall_ipsets'](peers, nodes) %}

firewalld-package:
  pkg.installed:
    - name: {{ gateway.firewall.package }}

{#- Debian's firewalld package enables and starts the service when it installs it:
    until the package is there, test=True cannot know better than "would be started",
    so the state only runs once it is installed (the real run, after firewalld-package).
    The onlyif is rendered only while the package is missing: any onlyif makes Salt look
    for service.mod_run_check, and that miss loads every state module (about 1 s of a
    no-change run, docs/performance.md "Converge and re-apply"). #}
firewalld-service:
  service.running:
    - name: {{ gateway.firewall.service }}
    - enable: True
    - require:
      - pkg: firewalld-package
{%- if gateway.firewall.started_by_package and not salt['pkg.version'](gateway.firewall.package) %}
    - onlyif:
      - fun: pkg.version
        args: [{{ gateway.firewall.package | json }}]
{%- endif %}

firewalld-gateway-rules:
  firewalld.rich_rules_managed:
    - name: {{ fw.get('zone', 'public') }}
    - rules: {{ rules | json }}
    - prune_owned: {{ fw.get('prune_owned', True) | json }}
    - management_networks: {{ fw.get('management_networks', []) | json }}
    - salt_master: {{ master | json }}
    - ipsets: {{ ipsets | json }}
    - require:
      - service: firewalld-service
