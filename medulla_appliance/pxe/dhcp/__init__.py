"""Optional proxyDHCP (PXE 2.1): ``packets`` (the DHCP codec), ``proxy`` (who gets which
boot file, who gets nothing) and ``udp`` (the sockets on UDP 67 and 4011, the service)."""
