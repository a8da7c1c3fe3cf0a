#!jinja|yaml|gpg
{#- PgBouncer on the gateways (vpn_gateway.pgbouncer), with the lab's addresses.
    The passwords are ciphertext for the master's key (gpg renderer, docs/pillar.md). #}
{%- set k8s_side = {'vpn-gw1': '198.18.2.11', 'vpn-gw2': '198.18.2.12'} %}
vpn_gateway:
  pooler:
    # Shared: the port the Kubernetes Service and the firewall point at.
    listen_port: 6432
    # Loopback for local checks, the Kubernetes-side address for the pods.
    listen_addr: "127.0.0.1,{{ k8s_side.get(grains['id'], '198.18.2.11') }}"
    # Allow restarting PgBouncer (drops every client) for listen_*/unix_socket_dir/pidfile.
    restart: false
    settings:
      auth_type: hba
      pool_mode: transaction
      max_client_conn: 500
      max_db_connections: 50
      default_pool_size: 20
      min_pool_size: 3
      reserve_pool_size: 5
      reserve_pool_timeout: 5
      server_idle_timeout: 300
      server_lifetime: 1800
      query_wait_timeout: 120
      server_connect_timeout: 15
      server_check_query: "SELECT 1"
      server_check_delay: 30
      # Names the pod in pg_stat_activity, but costs a round trip per transaction when a
      # server connection changes client (docs/pgbouncer.md, benchmark).
      application_name_add_host: true
      log_connections: true
      log_disconnections: true
      log_pooler_errors: true
      admin_users: pooler_admin
      stats_users: pooler_stats
      # psycopg/JDBC send it at startup; PgBouncer would refuse the client otherwise.
      ignore_startup_parameters: extra_float_digits
    # The admin database 'pgbouncer' (SHUTDOWN, PAUSE, KILL for admin_users) is closed to the
    # pods' network: the pack reaches the console over the Unix socket (peer). The
    # settings check refuses a rule that opens it to a network.
    hba:
      - host all all 127.0.0.1/32 scram-sha-256
      - host pgbouncer all 198.18.2.0/24 reject
      - host all all 198.18.2.0/24 scram-sha-256
    # TLS on both legs (docs/pgbouncer.md, "TLS"). Pods' leg: PgBouncer's certificate for
    # the Service's names (NAME.NAMESPACE.svc and .svc.cluster.local, vpn_gateway:kubernetes:
    # service), checked against its key, its CA and those names before it is written.
    # The lab's: issued by a lab cluster CA (lab/postgres.py, issue()).
    tls:
      client:
        sslmode: require
        cert: |
          -----BEGIN CERTIFICATE-----
          MIIB+TCCAaCgAwIBAgIUPdS7dQuNBOFA7zmBUdus2LaBQqAwCgYIKoZIzj0EAwIw
          JTEjMCEGA1UEAwwadnBuLWdhdGV3YXkgbGFiIGNsdXN0ZXIgQ0EwIBcNMjYwMTAx
          MDAwMDAwWhgPMjEyNjAxMDEwMDAwMDBaMCExHzAdBgNVBAMMFnBvc3RncmVzLmRh
          dGFiYXNlcy5zdmMwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASf1BmZf1m15LNK
          0pKPGXI2hVZsHpCS5bHVCDBLxDi3DrZ/fv2z14IhtSTCykZ/GuQveflWM9x4f3VW
          BFkH1yB4o4GvMIGsMAwGA1UdEwEB/wQCMAAwHQYDVR0OBBYEFK31r+ZwR6ru/wIf
          eDDqOEUJUDroMB8GA1UdIwQYMBaAFAimWz+bOHWE49uwlZ81RYaep8qPMBMGA1Ud
          JQQMMAoGCCsGAQUFBwMBMEcGA1UdEQRAMD6CFnBvc3RncmVzLmRhdGFiYXNlcy5z
          dmOCJHBvc3RncmVzLmRhdGFiYXNlcy5zdmMuY2x1c3Rlci5sb2NhbDAKBggqhkjO
          PQQDAgNHADBEAiBLZ2mFkLcDbNkiDMxxcAzSm5rEz9IETaV6uiy0G0b6nwIgEYav
          d3Pnpo/zGpcMm4/smJEAywb5EfCxQ8UuyvdJ6AQ=
          -----END CERTIFICATE-----
        key: |
          -----BEGIN PGP MESSAGE-----

          hF4DLX4oa+g85dISAQdAHoBhBHc14bPveC5iICQhQ7WK1PHv6qT6bQsDWNy7aC0w
          Zj0c23LIZmA7DGGRTaoRkDPKF3zbcWSp0kU77ujcrYGTwyQPqVbX3gGef13fb8Ty
          0sBGAdZa33Dwtt73XrhSJ1/MorpjUEZs+nZkRfEouE1H3YATdLHbyD5MT9ECsZPs
          ThCnxn9vfwtdzQ8g6Xcqg+r2Ta6WJnPqeu7c59cXDWNs+CXTJWoDnffpqo3leOJQ
          EBekO0r8tbAVqTDhQ4YWnCJiwX1xbzhbNzoV+Io8Rtydw5EXyDK9ZIX2o5YtO9oM
          CjRdoGlCuQ9GrAC2LkGfcRHvewu9M6xPK92/Oxg5tqyPPgSDfB4iODI0TJqXis3Z
          qqZ8MnRqSVMBHVIZHH14duap9pOc8fvf/Mjx632Us5cLFvR4Lcqm7qxAI03AEIos
          EXUXF3RMwPIGLbJEDIvRmmZFARWwtdqqyg==
          =7mIi
          -----END PGP MESSAGE-----
        # The CA pods trust (their sslrootcert): the certificate must chain to it.
        ca: |
          -----BEGIN CERTIFICATE-----
          MIIBnjCCAUSgAwIBAgIBATAKBggqhkjOPQQDAjAlMSMwIQYDVQQDDBp2cG4tZ2F0
          ZXdheSBsYWIgY2x1c3RlciBDQTAgFw0yNjAxMDEwMDAwMDBaGA8yMTI2MDEwMTAw
          MDAwMFowJTEjMCEGA1UEAwwadnBuLWdhdGV3YXkgbGFiIGNsdXN0ZXIgQ0EwWTAT
          BgcqhkjOPQIBBggqhkjOPQMBBwNCAAQWbl/GeVT1kUNPAVV7rsqaPRR9WUYyBaWB
          l891BJbnW+8iwVtt4Ky3U9Eq4efdYN7gaEQz+uojfqFVlZH8Pgyro2MwYTAPBgNV
          HRMBAf8EBTADAQH/MB0GA1UdDgQWBBQIpls/mzh1hOPbsJWfNUWGnqfKjzAfBgNV
          HSMEGDAWgBQIpls/mzh1hOPbsJWfNUWGnqfKjzAOBgNVHQ8BAf8EBAMCAQYwCgYI
          KoZIzj0EAwIDSAAwRQIhAKISXknwWw3c+nLodNio6RM00kkyr5iPRwMl4X7YQ9ea
          AiADUdhc6k9JXkI735HisZSA1qshHCrfJB5W/xl5sJ5/pw==
          -----END CERTIFICATE-----
      # Database leg: verify-full against the database's CA (the lab's: lab/postgres.py).
      server:
        sslmode: verify-full
        ca: |
          -----BEGIN CERTIFICATE-----
          MIIBnzCCAUagAwIBAgIBATAKBggqhkjOPQQDAjAmMSQwIgYDVQQDDBt2cG4tZ2F0
          ZXdheSBsYWIgZGF0YWJhc2UgQ0EwIBcNMjYwMTAxMDAwMDAwWhgPMjEyNjAxMDEw
          MDAwMDBaMCYxJDAiBgNVBAMMG3Zwbi1nYXRld2F5IGxhYiBkYXRhYmFzZSBDQTBZ
          MBMGByqGSM49AgEGCCqGSM49AwEHA0IABGxcokwC+Zsu9493d4fKx95IcOjqc3yo
          7lxdWfc9KfIUU39SGsi/7OcNejIPLh8dKhcTcZcsDzPyCcaluxpuqN6jYzBhMA8G
          A1UdEwEB/wQFMAMBAf8wHQYDVR0OBBYEFNfKXG0nmhhlQQ2k0VIzgjTKAXBAMB8G
          A1UdIwQYMBaAFNfKXG0nmhhlQQ2k0VIzgjTKAXBAMA4GA1UdDwEB/wQEAwIBBjAK
          BggqhkjOPQQDAgNHADBEAiEA3ipnxT9NQWSXoBtyQILc5bympPIzkNWzDmhStO2f
          gNMCH2POiZDQeOC5DhxGTYpKdFlpoB/OEUPsx6ttiAUYYjY=
          -----END CERTIFICATE-----
    users:
      app:
        password: |
          -----BEGIN PGP MESSAGE-----

          hF4DLX4oa+g85dISAQdAj0GVmwsqCnWlkHlgkvQFGPSfe8FEXxm4Rxa0Pa1e5SEw
          3FV80TUjFPjXN7s17KAtK8Jntd/oCLNhWA4Wk39XW9JSOrQ+PyDhvQ4swa5yhgR1
          0ksB5Jt7uF0qV7eBYViyneIotCYfA9/dWb+bFu/XYKpK7L5Gp2A94OsDjqrl/fQe
          lgEhCWajqnROmnjnA7imxA7W/MRZfqrCs83zVQg=
          =unmp
          -----END PGP MESSAGE-----
      pooler_admin:
        password: |
          -----BEGIN PGP MESSAGE-----

          hF4DLX4oa+g85dISAQdAbUgBI5pF/uE/BqOB/Hxypi2vFF0sWSQFG41k0+pCvk4w
          oq5jEkYGFmWuoH/BBfDTjkT+hRAER9rQ4veaAUEjoR62Q+DQS4qqAHYQVAsZrHqA
          0k0BsI3rWBTmvp6rz8S5ilkVW0Mt9ZH8UPA28alcGw+Ung6PiLwmprJ3a59R8WiJ
          D7TW3JgiesxnnWp6y2eoO3cqkxFQEBCkW74tgdUTxA==
          =qYvl
          -----END PGP MESSAGE-----
      pooler_stats:
        password: |
          -----BEGIN PGP MESSAGE-----

          hF4DLX4oa+g85dISAQdA1dyLMrqL+dD/rIvyiNsNsEWU6GFthp9Jb9VE5vFYMFIw
          hJQkuWYPbpvdj+lqGZ4FmBjgnRvcvzB/r4vrAsxkpW+o+W0tXK/IZNJComklfnkI
          0k0BuT46es1VDAUJHQNB/HOclgCp+/r8zh+5gfm+Q15SAVCH5oxFi6rOwQJD68oH
          hy6jro7dQR9bgA630fHv2BQYRgKsO+YGP/p5OXu8pg==
          =+Qgl
          -----END PGP MESSAGE-----
    databases:
      appdb:
        host: 198.19.1.10
        port: 5432
        dbname: app
        pool_size: 20
