# Astro Runtime image for Airflow 3. The runtime's ONBUILD steps copy this project to /usr/local/airflow
# and install requirements.txt (the packages this project needs on top of the Airflow in the image).
# The line below then installs the project itself as a provider distribution, which registers the
# `coinstats` and `coinstats_exchange` connection types and the extra link (plugins/ alone cannot).
# The package stays in plugins/ too (on sys.path, imported by its full name); plugins/.airflowignore keeps
# Airflow's plugin loader from importing its modules a second time under bare names. .dockerignore drops
# build leftovers (a stale *.egg-info on sys.path would report an old version).
# Runtime 3.3-x ships Airflow 3.3. The test suite does not build this image (that needs a Docker engine).
ARG ASTRO_RUNTIME_IMAGE=astrocrpublic.azurecr.io/runtime:3.3-2
FROM ${ASTRO_RUNTIME_IMAGE}
RUN pip install --no-cache-dir --no-deps /usr/local/airflow
