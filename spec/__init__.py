"""musicfs' executable specification: the requirement catalogue and the pytest plugin that
judges every test run against it (see spec/README.md)."""
