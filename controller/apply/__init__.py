"""`turnout apply`: a file of services brought to life. `spec` (the spec hash), `plan` (what to do per
service: pure), `run` (doing it through the deployer), `watch` (`turnout serve --watch`)."""
