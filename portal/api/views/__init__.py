"""REST API v1: the portal's patients, studies, uploads and analyses for other systems,
one module per resource.

Every view is a thin layer over the portal's own services and selectors (the same ones
the pages call), with the same permissions as the pages (portal.accounts.roles) and the
same audit records for views of studies, downloads and retries.
"""
