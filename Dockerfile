# kone's container image: kone, iptables and nftables with their libraries, mount and CA
# certificates, on no base image, so that it builds with no registry. scripts/image prepares
# the build context (the root filesystem, from a binary that scripts/build or scripts/release
# made) and builds it:
#   scripts/image amd64 dist/kone-linux-amd64
# Run it privileged, with a volume for the data dir:
#   docker run -d --privileged --name kone-server -p 6443:6443 -v kone:/var/lib/kone IMAGE server
#   docker run -d --privileged -e KONE_URL=https://SERVER:6443 -e KONE_TOKEN=TOKEN IMAGE agent
FROM scratch
ARG TARGETARCH=amd64
ADD dist/image/rootfs-${TARGETARCH}.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
VOLUME ["/var/lib/kone", "/var/lib/kubelet", "/var/log"]
ENTRYPOINT ["/usr/bin/kone"]
CMD ["server"]
