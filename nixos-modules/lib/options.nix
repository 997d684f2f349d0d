# The services.loom-server options generated from the shared table
# (src/server/config/variables.json): one option per table entry, at the entry's `option` path,
# with its type derived from the entry's type and its default taken from the entry.
#
# Needs only `lib.mkOption` and `lib.types` from nixpkgs, so tests/nix evaluates it through the
# stand-in nixpkgs' port of the module system and checks the type of every option.
{ lib, env ? import ./env.nix { } }:
let
  inherit (lib) mkOption types;

  typeOf = v:
    let
      base =
        if v.type == "bool" then types.bool
        else if v.type == "int" then types.ints.between v.min v.max
        else if v.type == "number" then types.numbers.between v.min v.max
        else if v.type == "enum" then types.enum v.values
        else if v.type == "list" then types.listOf types.str
        else if v.type == "string" && v ? pattern then types.strMatching v.pattern
        # addr, path (relative paths are allowed: they resolve against the unit's
        # WorkingDirectory, /var/lib/loom-server), quantity-cpu, quantity-memory, string:
        # loom-server checks these at start and stops with one line naming the variable.
        else types.str;
    in
    if env.isOptional v then types.nullOr base else base;

  describe = v:
    "${v.description}. Sets `${v.name}`."
    + (if env.isOptional v then " `null` leaves the variable unset." else "");

  optionFor = v: mkOption {
    type = typeOf v;
    default = env.optionDefault v;
    description = describe v;
  };
in
builtins.foldl' (acc: v: env.merge acc (env.setAttrByPath (env.splitPath v.option) (optionFor v)))
  { } env.variables
