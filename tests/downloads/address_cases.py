"""One list of addresses for every test of the address policy: the unit and property tests, and
the isolated downloads on both executors. Each refused one names why it is not public."""

REFUSED = {
    "loopback": "127.0.0.1",
    "other-loopback": "127.0.0.2",
    "private-10": "10.0.0.1",
    "private-192": "192.168.1.1",
    "link-local": "169.254.169.254",
    "cgnat": "100.64.0.1",
    "benchmark": "198.18.0.1",
    "reserved-240": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "multicast-v4": "224.0.0.1",
    "unspecified": "0.0.0.0",
    "ipv6-loopback": "::1",
    "ipv6-unspecified": "::",
    "site-local": "fec0::1",
    "unique-local": "fd00::1",
    "link-local-v6": "fe80::1",
    "multicast-v6": "ff0e::1",
    "documentation-v6": "2001:db8::1",
    "documentation-3fff": "3fff::1",
    "discard-only": "100::1",
    "mapped": "::ffff:127.0.0.1",
    "mapped-private": "::ffff:10.0.0.1",
    "translated": "::ffff:0:7f00:1",
    "translated-private": "::ffff:0:c0a8:101",
    "compatible": "::127.0.0.1",
    "compatible-public": "::8.8.8.8",  # deprecated form: never a real host
    "nat64-loopback": "64:ff9b::7f00:1",
    "nat64-private": "64:ff9b::a00:1",
    "nat64-local-use": "64:ff9b:1::808:808",
    "6to4-loopback": "2002:7f00:1::1",
    "6to4-private": "2002:a00:1::1",
    "teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "orchid": "2001:20::1",
}

ALLOWED = {
    "public-v4": "93.184.216.34",
    "public-v6": "2606:4700::1111",
    "mapped-public": "::ffff:93.184.216.34",
    "translated-public": "::ffff:0:5db8:d822",
    "nat64-public": "64:ff9b::5db8:d822",
    "6to4-public": "2002:5db8:d822::1",
}
