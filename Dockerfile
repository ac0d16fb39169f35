# tidepool in a container: a Debian 12 build stage and a slim runtime stage holding the binary,
# the apps and the runtime libraries only (docs/deploy.md).
#
#   docker build -t tidepool .
#   docker run -p 8080:8080 -v tidepool-data:/var/lib/tidepool tidepool
#
# The same image runs every role: `up` (the default command), `web`, `worker --app ...`,
# `broker`, `pool`.

FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ cmake ninja-build pkg-config \
      libboost1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libsqlite3-dev libpq-dev libnats-dev libssl-dev libyaml-cpp-dev \
      libgtest-dev libgmock-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto ./proto
COPY src ./src
COPY ui ./ui
COPY apps ./apps
COPY examples ./examples
COPY tests ./tests
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTIDEPOOL_BUILD_BENCH=OFF \
 && cmake --build build --target tidepool

FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libgrpc++1.51 libprotobuf32 libyaml-cpp0.7 libsqlite3-0 libpq5 \
      libnats3.4 libssl3 libboost-json1.81.0 libboost-container1.81.0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/tidepool --create-home tidepool
COPY --from=build /src/build/tidepool /opt/tidepool/bin/tidepool
COPY apps /opt/tidepool/apps
# The binary finds apps/ beside its bin/ directory; the UI is built into it.
ENV PATH=/opt/tidepool/bin:$PATH \
    TIDEPOOL_DATA_DIR=/var/lib/tidepool \
    TIDEPOOL_WEB_LISTEN=0.0.0.0:8080
USER tidepool
WORKDIR /var/lib/tidepool
VOLUME /var/lib/tidepool
EXPOSE 8080
# SIGTERM drains: the web tier stops taking messages, workers finish what they hold.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tidepool"]
CMD ["up"]
