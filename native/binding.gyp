{
  "targets": [
    {
      "target_name": "loom_native",
      "sources": ["src/addon.cc", "src/fsinfo.cc", "src/copytree.cc", "src/copy_addon.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-pthread"],
      "ldflags": ["-pthread"],
      "cflags_cc!": ["-fno-exceptions"]
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
