{#- Kubernetes side: the selector-less Service pods use for the database and the
    EndpointSlices that point it at the gateways' pooler. Only the minion named in
    vpn_gateway:kubernetes:minion talks to the API server; on every other minion
    this renders to a no-op, so the gateway role can include it everywhere. The k8s
    module finds the kubeconfig itself (vpn_gateway:kubernetes:kubeconfig/context,
    from the minion config or this pillar). #}
include:
  - vpn_gateway.recovery_lock

{%- set k8s = salt['pillar.get']('vpn_gateway:kubernetes', {}) %}
{%- set service = k8s.get('service', {}) %}
{%- set pooler_port = salt['pillar.get']('vpn_gateway:pooler:listen_port', service.get('port', 5432)) %}
{%- if grains['id'] == k8s.get('minion') %}
{%- for key in ('name', 'namespace') if not service.get(key) %}
{{- raise('pillar vpn_gateway:kubernetes:service:' ~ key ~ ' is missing: set the Service ' ~ key) }}
{%- endfor %}
{%- if not k8s.get('gateway_addresses') %}
{{- raise('pillar vpn_gateway:kubernetes:gateway_addresses is empty: list the addresses pods connect to') }}
{%- endif %}

vpn_gateway_k8s_service:
  k8s.service_present:
    - name: {{ service.name }}
    - namespace: {{ service.namespace }}
    - ports:
      - name: {{ service.get('port_name', 'postgres') }}
        port: {{ service.get('port', 5432) }}
        target_port: {{ pooler_port }}
    - force: {{ k8s.get('force_conflicts', False) }}
    - dry_run: {{ k8s.get('dry_run', 'always') | json }}

vpn_gateway_k8s_endpointslices:
  k8s.endpointslice_present:
    - name: {{ service.name }}
    - namespace: {{ service.namespace }}
    - endpoints: {{ k8s.get('gateway_addresses', []) | json }}
    - ports:
      - name: {{ service.get('port_name', 'postgres') }}
        port: {{ pooler_port }}
    - force: {{ k8s.get('force_conflicts', False) }}
    - dry_run: {{ k8s.get('dry_run', 'always') | json }}
    - terminating: {{ k8s.get('draining', []) | json }}
    - require:
      - k8s: vpn_gateway_k8s_service

{%- else %}

vpn_gateway_k8s_elsewhere:
  test.succeed_without_changes:
    - comment: "the Kubernetes objects are applied by minion {{ k8s.get('minion', '(unset: vpn_gateway:kubernetes:minion)') }}"
{%- endif %}
