"""Small kits the domains build on: the service contract (`service`), JSON API helpers
(`api`) and CLI verb registration (`cli`). They import nothing above the core layer."""
