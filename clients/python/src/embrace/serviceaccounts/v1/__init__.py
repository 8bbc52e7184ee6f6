"""Generated client for the embrace.serviceaccounts.v1 gRPC API.

The modules next to this file are generated from proto/embrace/serviceaccounts/v1/ by
clients/python/generate.sh; do not edit them by hand.
"""
