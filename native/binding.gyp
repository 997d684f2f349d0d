{
  "targets": [
    {
      "target_name": "loom_native",
      "sources": ["src/addon.cc", "src/fsinfo.cc", "src/copytree.cc", "src/copy_addon.cc", "src/pipe.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-pthread"],
      "ldflags": ["-pthread"],
      "cflags_cc!": ["-fno-exceptions"]
    },
    {
      "target_name": "loom_audit_bpf",
      "type": "none",
      "actions": [
        {
          "action_name": "ebpf_skeletons",
          "inputs": ["../ebpf/audit.bpf.c", "../ebpf/audit_fentry.bpf.c", "../ebpf/audit_common.bpf.h", "../ebpf/audit.h", "../ebpf/probe.bpf.c", "../ebpf/Makefile"],
          "outputs": ["<(SHARED_INTERMEDIATE_DIR)/ebpf/audit.skel.h", "<(SHARED_INTERMEDIATE_DIR)/ebpf/audit_fentry.skel.h", "<(SHARED_INTERMEDIATE_DIR)/ebpf/probe.skel.h"],
          "action": ["make", "-s", "-C", "../ebpf", "OUT=<(SHARED_INTERMEDIATE_DIR)/ebpf"]
        }
      ]
    },
    {
      "target_name": "loom_audit",
      "dependencies": ["loom_audit_bpf"],
      "sources": ["src/audit_addon.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "../ebpf", "<(SHARED_INTERMEDIATE_DIR)/ebpf"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-pthread", "-Wno-missing-field-initializers"],
      "ldflags": ["-pthread"],
      "libraries": ["-lbpf", "-lelf", "-lz"],
      "cflags_cc!": ["-fno-exceptions"]
    },
    {
      "target_name": "loom_wg",
      "sources": ["src/wg/crypto.c", "src/wg/tun.c", "src/wg/addon.c"],
      "defines": ["NAPI_VERSION=8"],
      "conditions": [
        ["<!(test -f '<(node_root_dir)/include/node/openssl/evp.h' && echo 1 || echo 0) == 0", {
          "cflags": ["<!@(pkg-config --cflags openssl)"]
        }]
      ],
      "cflags": ["-std=c11", "-O2", "-Wall", "-Wextra", "-pthread"],
      "ldflags": ["-pthread"]
    },
    {
      "target_name": "loom_usernet",
      "conditions": [
        ["<!(pkg-config --exists lwip && echo 1 || echo 0) == 1", {
          "sources": ["src/wg/usernet.c"],
          "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-pthread", "-Wno-unused-parameter", "<!@(pkg-config --cflags lwip)"],
          "ldflags": ["-pthread"],
          "libraries": ["<!@(pkg-config --libs lwip)"]
        }, {
          "type": "none"
        }]
      ],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "loom-attach-relay",
      "type": "executable",
      "sources": ["src/attach-relay.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "loom-exec",
      "type": "executable",
      "sources": ["src/exec-helper.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
