{#- PgBouncer on the gateway: package and the PostgreSQL client (psql reaches the admin
    console), the package's own instance taken over (Debian starts one on install; the
    formula's unit has the same name), account, directories, a hardened unit, and
    pgbouncer.ini / auth file / HBA rules from pillar vpn_gateway:pooler through the
    pgbouncer states (validated, applied with RELOAD; a restart only with pooler:restart). #}
include:
  - vpn_gateway.recovery_lock

{%- from "vpn_gateway/map.jinja" import gateway with context %}
{%- set pgb = gateway.pgbouncer %}
{%- set pooler = salt['pillar.get']('vpn_gateway:pooler', {}) %}
{%- set restart = pooler.get('restart', False) %}
{%- set settings = {
      'logfile': pgb.log_dir ~ '/pgbouncer.log',
      'unix_socket_dir': pgb.run_dir,
      'auth_file': pgb.conf_dir ~ '/userlist.txt',
      'auth_hba_file': pgb.conf_dir ~ '/pg_hba.conf',
      'listen_port': pooler.get('listen_port', 6432),
      'listen_addr': pooler.get('listen_addr', '127.0.0.1'),
    } %}
{#- TLS on both legs (docs/pgbouncer.md, "TLS"): the pods' leg with a certificate for the
    Service's DNS names (vpn_gateway:kubernetes:service), the database leg verified against
    the database's CA. pgbouncer.tls_present writes the files; the settings name them. #}
{%- set tls = pooler.get('tls', {}) %}
{%- set tls_files = {'cert': pgb.conf_dir ~ '/client-tls.crt',
                     'key': pgb.conf_dir ~ '/client-tls.key',
                     'server_ca': pgb.conf_dir ~ '/server-ca.crt'} %}
{%- set service = salt['pillar.get']('vpn_gateway:kubernetes:service', {}) %}
{%- set dns_names = [] %}
{%- if service.get('name') and service.get('namespace') %}
{%-   set svc = service.name ~ '.' ~ service.namespace ~ '.svc' %}
{%-   do dns_names.extend([svc, svc ~ '.cluster.local']) %}
{%- endif %}
{%- if tls.get('client') %}
{%-   do settings.update({'client_tls_sslmode': tls.client.get('sslmode', 'require'),
                          'client_tls_cert_file': tls_files.cert,
                          'client_tls_key_file': tls_files.key}) %}
{%- endif %}
{%- if tls.get('server') %}
{%-   do settings.update({'server_tls_sslmode': tls.server.get('sslmode', 'verify-full')}) %}
{%-   if tls.server.get('ca') %}
{%-     do settings.update({'server_tls_ca_file': tls_files.server_ca}) %}
{%-   endif %}
{%- endif %}
{%- do settings.update(pooler.get('settings', {})) %}

pgbouncer-package:
  pkg.installed:
    - name: {{ pgb.package }}

pgbouncer-client-package:
  pkg.installed:
    - name: {{ pgb.client_package }}

{#- Debian's package enables and starts its own instance (User=postgres, 127.0.0.1:6432)
    and ships a default pgbouncer.ini: stop it and move that file aside before ours takes
    the port (docs/pgbouncer.md, "The package's own instance"). #}
pgbouncer-packaged-instance:
  pgbouncer.packaged_instance_absent:
    - name: {{ pgb.service }}
    - package: {{ pgb.package }}
    - pillar_key: vpn_gateway:pooler
    - require:
      - pkg: pgbouncer-package

pgbouncer-group:
  group.present:
    - name: {{ pgb.group }}
    - system: True

pgbouncer-user:
  user.present:
    - name: {{ pgb.user }}
    - gid: {{ pgb.group }}
    - system: True
    - home: /nonexistent
    - createhome: False
    - shell: /usr/sbin/nologin
    - require:
      - group: pgbouncer-group

{%- for path, owner, mode in [(pgb.conf_dir, 'root', '0750'),
                              (pgb.log_dir, pgb.user, '0750'),
                              (pgb.run_dir, pgb.user, '0755')] %}

pgbouncer-dir-{{ path }}:
  file.directory:
    - name: {{ path }}
    - user: {{ owner }}
    - group: {{ pgb.group }}
    - mode: '{{ mode }}'
    - require:
      - user: pgbouncer-user
{%- endfor %}

pgbouncer-tmpfiles:
  file.managed:
    - name: /etc/tmpfiles.d/pgbouncer.conf
    - contents: 'd {{ pgb.run_dir }} 0755 {{ pgb.user }} {{ pgb.group }} -'
    - mode: '0644'

pgbouncer-unit:
  file.managed:
    - name: /etc/systemd/system/{{ pgb.service }}.service
    - source: salt://vpn_gateway/files/pgbouncer/pgbouncer.service.jinja
    - template: jinja
    - context:
        pgb: {{ pgb | json }}
    - mode: '0644'

pgbouncer-unit-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: pgbouncer-unit

{#- The package ships one owned by postgres; the entries are pgbouncer.user_present's. #}
pgbouncer-auth-file:
  file.managed:
    - name: {{ settings.auth_file }}
    - replace: False
    - user: {{ pgb.user }}
    - group: {{ pgb.group }}
    - mode: '0640'
    - require:
      - file: pgbouncer-dir-{{ pgb.conf_dir }}

{%- if tls.get('client') or tls.get('server') %}

pgbouncer-tls:
  pgbouncer.tls_present:
    - files: {{ tls_files | json }}
    - client_pillar: vpn_gateway:pooler:tls:client
    - server_pillar: vpn_gateway:pooler:tls:server
    - dns_names: {{ dns_names | json }}
    - pillar_key: vpn_gateway:pooler
    - require:
      - pkg: pgbouncer-package
      - pkg: pgbouncer-client-package
      - pgbouncer: pgbouncer-packaged-instance
      - file: pgbouncer-dir-{{ pgb.conf_dir }}
    - require_in:
      - pgbouncer: pgbouncer-settings
{%- endif %}

pgbouncer-settings:
  pgbouncer.settings:
    - settings: {{ settings | json }}
    - hba: {{ pooler.get('hba', []) | json }}
    - restart: {{ restart }}
    - pillar_key: vpn_gateway:pooler
    - require:
      - pkg: pgbouncer-package
      - pkg: pgbouncer-client-package
      - pgbouncer: pgbouncer-packaged-instance
      - file: pgbouncer-auth-file

{%- for name, user in pooler.get('users', {}).items() %}

pgbouncer-user-{{ name }}:
  pgbouncer.user_present:
    - name: {{ name }}
    - password_pillar: vpn_gateway:pooler:users:{{ name }}:password
    - stored: {{ user.get('stored', 'plain') }}
    {%- if user.get('salt') %}
    - salt: {{ user.salt }}
    {%- endif %}
    - pillar_key: vpn_gateway:pooler
    - track: True
    - require:
      - pgbouncer: pgbouncer-settings
    - require_in:
      - service: pgbouncer-service
{%- endfor %}

pgbouncer-service:
  service.running:
    - name: {{ pgb.service }}
    - enable: True
    - require:
      - pgbouncer: pgbouncer-settings
      - file: pgbouncer-tmpfiles
      - cmd: pgbouncer-unit-reload
    {%- if restart %}
    - watch:
      - file: pgbouncer-unit
    {%- endif %}

{%- for name, database in pooler.get('databases', {}).items() %}

pgbouncer-pool-{{ name }}:
  pgbouncer.pool_present:
    - name: {{ name }}
    {%- for key, value in database.items() %}
    - {{ key }}: {{ value | json }}
    {%- endfor %}
    - pillar_key: vpn_gateway:pooler
    - track: True
    - require:
      - service: pgbouncer-service
{%- endfor %}

{#- Users and pools the states above created (track) and pillar no longer declares leave
    the auth file and pgbouncer.ini (RELOAD); an operator's own entries stay
    (docs/pgbouncer.md, "Removal"). #}
pgbouncer-pruned:
  pgbouncer.pruned:
    - users: {{ pooler.get('users', {}) | list | json }}
    - databases: {{ pooler.get('databases', {}) | list | json }}
    - pillar_key: vpn_gateway:pooler
    - require:
      - service: pgbouncer-service
