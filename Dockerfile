# Astro Runtime 3.3-8 ships Airflow 3.3.2, the version requirements.lock pins and every test runs on.
# Runtime 3.3 images come in Python 3.12, 3.13 and 3.14 variants (default 3.14); none ships Python 3.11,
# which the tests use. The 3.12 variant is the nearest Python this project supports (requires-python
# >=3.11). The FROM line is a literal image reference: the Astro CLI reads the runtime version from it.
#
# The runtime's ONBUILD steps copy packages.txt and requirements.txt and install them, then copy this
# project to /usr/local/airflow. The line below installs the project itself as a provider distribution,
# which registers the `coinstats` and `coinstats_exchange` connection types and the extra link
# (plugins/ alone cannot). The package stays in plugins/ too (on sys.path, imported by its full name);
# plugins/.airflowignore keeps Airflow's plugin loader from importing its modules a second time under
# bare names. .dockerignore drops build leftovers (a stale *.egg-info on sys.path would report an old
# version). The test suite does not build this image (that needs a Docker engine).
FROM astrocrpublic.azurecr.io/runtime:3.3-8-python-3.12
RUN pip install --no-cache-dir --no-deps /usr/local/airflow
