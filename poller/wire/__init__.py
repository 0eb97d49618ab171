"""The cloud's wire: request signing, the HTTP transports, the API client, credentials and
group discovery. Imports only the core and config.
"""
