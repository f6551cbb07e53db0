# Load a Vagrantfile with a stand-in `Vagrant.configure` that records every setting, and print
# them as JSON (key: the setting's path, e.g. "config.vm.provider.libvirt.driver"). Ruby only,
# no Vagrant: tests read what the Vagrantfile decides for a given environment.
require "json"

class Recorder
  def initialize(path, log)
    @path = path
    @log = log
  end

  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    if n.end_with?("=")
      @log[(@path + [n.chomp("=")]).join(".")] = args[0]
      return args[0]
    end
    key = (@path + [n]).join(".")
    return @log[key] if args.empty? && kw.empty? && blk.nil? && @log.key?(key)
    if blk
      blk.call(Recorder.new(@path + [n] + args.map(&:to_s), @log))
      return nil
    end
    @log["#{key}(#{args.map(&:to_s).join(",")})"] = kw.empty? ? true : kw
    Recorder.new(@path + [n], @log)
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  LOG = {}
  def self.configure(_version)
    yield Recorder.new(["config"], LOG)
  end
end

load ARGV.fetch(0)
puts JSON.generate(Vagrant::LOG)
