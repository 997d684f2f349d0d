# The mapping from services.loom-server settings to loom-server's environment.
#
# Pure: builtins only, no nixpkgs. loom-server.nix uses exactly this function for the unit's
# environment, and tests/nix/env.test.ts evaluates it with `nix-instantiate --eval`, so the test
# exercises the code that really runs.
#
# The table is src/server/config/variables.json, the same file src/server/config/load.ts reads:
# every entry with an `option` path is mapped here, so the two cannot drift.
#
#   import ./env.nix { }                  -> { variables, toEnv, defaults, ... }
#   (import ./env.nix { }).toEnv settings -> { LOOM_HTTP_ADDR = "127.0.0.1:18090"; ... }
#
# Rules:
#   bool              -> "true" / "false"
#   int, number       -> decimal string (4, 0.5; never an exponent)
#   list              -> comma-joined; an empty list is omitted
#   string, path, ... -> as is; null or "" is omitted (the server then uses its own default,
#                        which is what an unset or empty variable means to load.ts)
#   a setting that is absent from `settings` takes the table's default.
{ table ? (builtins.fromJSON (builtins.readFile ../../src/server/config/variables.json)).variables }:
let
  inherit (builtins) filter map head tail length isAttrs isBool isInt isFloat isString isList
    elem all concatStringsSep listToAttrs toJSON match substring stringLength foldl' attrNames;

  splitPath = option: filter isString (builtins.split "\\." option);

  attrByPath = path: default: set:
    if path == [ ] then set
    else if isAttrs set && set ? ${head path} then attrByPath (tail path) default set.${head path}
    else default;

  setAttrByPath = path: value:
    if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };

  # recursiveUpdate for plain nested attrsets (option defaults), builtins only.
  merge = a: b:
    a // builtins.mapAttrs (n: v: if a ? ${n} && isAttrs a.${n} && isAttrs v then merge a.${n} v else v) b;

  # Variables the module sets: every table entry with an option path.
  variables = filter (v: v ? option && v.option != null) table;

  # A string or path whose table default is "" is optional: null in Nix, omitted from the env.
  isOptional = v: (v.type == "string" || v.type == "path") && v.default == "";

  # The default the NixOS option carries (null for optional strings).
  optionDefault = v: if isOptional v then null else v.default;

  hasExponent = s: match ".*[eE].*" s != null;

  formatNumber = name: x:
    if isInt x then toString x
    else
      let s = toJSON x; in
      if hasExponent s then throw "${name}: ${s} cannot be written as a plain decimal; use a value between 0.0001 and 1e15"
      else s;

  where = v: "services.loom-server.${v.option} (${v.name})";

  # Type check against the table (the generated NixOS option types check the same; this keeps
  # the pure function honest on its own).
  check = v: x:
    let
      bad = what: throw "${where v}: expected ${what}, got ${toJSON x}";
      inRange = (!(v ? min) || x >= v.min) && (!(v ? max) || x <= v.max);
      range = "${toString (v.min or "-inf")}..${toString (v.max or "inf")}";
    in
    if x == null then (if isOptional v then x else bad v.type)
    else if v.type == "bool" then (if isBool x then x else bad "a bool")
    else if v.type == "int" then (if isInt x && inRange then x else bad "an int in ${range}")
    else if v.type == "number" then (if (isInt x || isFloat x) && inRange then x else bad "a number in ${range}")
    else if v.type == "enum" then (if elem x v.values then x else bad "one of ${concatStringsSep ", " v.values}")
    else if v.type == "list" then (if isList x && all isString x then x else bad "a list of strings")
    else if !(isString x) then bad "a string"
    else if v ? pattern && x != "" && match v.pattern x == null then bad "a string matching ${v.pattern}"
    else x;

  render = v: x0:
    let x = check v x0; in
    if x == null then null
    else if v.type == "bool" then (if x then "true" else "false")
    else if v.type == "int" || v.type == "number" then formatNumber (where v) x
    else if v.type == "list" then (if x == [ ] then null else concatStringsSep "," x)
    else if x == "" then null
    else x;

  valueOf = settings: v: attrByPath (splitPath v.option) (optionDefault v) settings;

  # settings (e.g. config.services.loom-server; extra attributes are ignored) -> { VAR = "..."; }
  toEnv = settings:
    listToAttrs (filter (e: e.value != null)
      (map (v: { name = v.name; value = render v (valueOf settings v); }) variables));

  # Nested attrset of option defaults: { listenAddress = ...; weaver = { audit = { ... }; }; }
  defaults = foldl' (acc: v: merge acc (setAttrByPath (splitPath v.option) (optionDefault v))) { } variables;

  # "host:port" / "[v6]:port" -> port (int); used for openFirewall and CAP_NET_BIND_SERVICE.
  portOf = addr:
    let m = match ".*:([0-9]+)" addr; in
    if m == null then throw "listenAddress ${toJSON addr} has no :port" else builtins.fromJSON (head m);
in
{
  inherit table variables splitPath attrByPath setAttrByPath merge isOptional optionDefault
    render toEnv defaults portOf;
  # Every option path the table defines, dotted (for the agreement check in loom-server.nix).
  optionPaths = map (v: v.option) variables;
}
